"""`muse doctor`: check what Muse needs, one line per check with a hint when one fails.

Checks: the settings parse (sharding included); the token's shape (never the token itself); the
model (local backend: the file or folder exists or is cached; `--load` loads it) or the server
(`MUSE_BACKEND=openai`: it answers `GET /models`); the database (opens read-only, schema
version, `PRAGMA integrity_check`, mode 0600, and no process writing to a deleted `-wal`; a
PostgreSQL URL: reachable, server version, schema, the password never shown).
Exit code 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from bot.core.settings import Settings, SettingsError
from bot.discord.sharding import plan_shards
from storage.maintenance import FileCheck, check_file
from storage.pg_check import check_server as check_database_server

TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
SERVER_TIMEOUT_S = 3.0
PORTAL = "https://discord.com/developers/applications"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""


def add_subcommand(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "doctor",
        help="check settings, token, model, database (and the model server)",
        description="Check what Muse needs; exit code 0 when every check passes, 1 otherwise.",
    )
    parser.add_argument("--load", action="store_true", help="also load the model (slower)")
    parser.set_defaults(func=run, reports_settings_errors=True)


def run(args: argparse.Namespace) -> int:
    checks = diagnose(args.settings, getattr(args, "settings_error", None), load=args.load)
    marks = _marks()
    width = max(len(c.name) for c in checks)
    for check in checks:
        print(f"{marks[check.ok]} {check.name:<{width}}  {check.detail}")
        if check.hint and not check.ok:
            print(f"  {' ' * width}  hint: {check.hint}")
    failed = sum(not c.ok for c in checks)
    print(f"{len(checks) - failed} of {len(checks)} checks passed" + ("" if failed else "."))
    return 1 if failed else 0


def diagnose(
    settings: Settings | None, error: Exception | None = None, *, load: bool = False
) -> list[Check]:
    """Every check, in order; without parsed settings only the settings check."""
    first = check_settings(settings, error)
    if settings is None or not first.ok:
        return [first]
    checks = [first, check_token(settings.discord_token.reveal())]
    if settings.backend == "openai":
        checks.append(check_server(settings))
    else:
        checks.append(check_model(settings, load=load))
    checks.append(check_database(settings.db_path))
    return checks


def check_settings(settings: Settings | None, error: Exception | None) -> Check:
    hint = "fix the named setting in the environment or .env (see .env.example)"
    if settings is None:
        return Check("settings", False, str(error or "could not be read"), hint)
    try:
        plan = plan_shards(settings)
    except SettingsError as exc:
        return Check("settings", False, str(exc), hint)
    shards = plan.describe() if plan else "not sharded"
    return Check("settings", True, f"parsed; backend {settings.backend}; {shards}")


def check_token(token: str) -> Check:
    """The token's shape only: its value is never printed, only its length."""
    hint = f"copy the token from {PORTAL} → your application → Bot → Reset Token"
    if not token:
        return Check(
            "token", False, "DISCORD_TOKEN is not set (muse run would start console mode)", hint
        )
    if token[:4].lower() == "bot ":
        return Check("token", False, "DISCORD_TOKEN starts with 'Bot '", "set only the token")
    if token[0] in "\"'" or token[-1] in "\"'":
        return Check("token", False, "DISCORD_TOKEN is in quotes", "remove the quotes")
    if not TOKEN_SHAPE.fullmatch(token):
        detail = (
            f"DISCORD_TOKEN does not look like a bot token ({len(token)} characters; "
            "expected three base64url parts separated by dots)"
        )
        return Check("token", False, detail, hint)
    return Check("token", True, f"looks valid ({len(token)} characters, three parts)")


def check_model(settings: Settings, *, load: bool = False) -> Check:
    from generation.errors import ModelLoadError
    from generation.model.loading import resolve_device

    try:
        device = resolve_device(settings.device)
        found = _find_model(settings)
    except ModelLoadError as exc:
        return Check("model", False, str(exc), "set MUSE_MODEL (and MUSE_DEVICE), see README")
    if not found.ok or not load:
        return found
    from bot.cli.wiring import engine_model
    from generation.model.loading import describe
    from generation.model.memory import model_bytes, resident_bytes, wide_bytes, wide_kept_bytes
    from generation.model.native_step import availability

    try:
        loaded = engine_model(settings)  # as the engine would: MUSE_WEIGHTS and all
    except ModelLoadError as exc:
        return Check("model", False, str(exc), "see README, 'The model'")
    weights = describe(loaded)
    took = f"{loaded.load_s:.1f} s"
    resident = resident_bytes()  # before the C++ step's build adds its library
    step = availability(weights, loaded.device.type)  # builds the C++ step now, not at start
    wide = ""
    if weights.startswith("int4"):
        kept, whole = wide_kept_bytes(loaded.model), wide_bytes(loaded.model)
        share = "kept" if kept == whole else f"{kept / 2**30:.2f} GiB of {whole / 2**30:.2f} kept"
        wide = f", the bf16 copy for prompts {share if kept else 'not kept'}"
        wide += f" (MUSE_MEMORY={settings.memory})"
    return Check(
        "model",
        True,
        f"loaded {loaded.model_id} on {device} ({weights}) in {took}; resident memory "
        f"{resident / 2**30:.2f} GiB (its weights {model_bytes(loaded.model) / 2**30:.2f} GiB, "
        f"those mapped from the cache resident once read){wide}; a few requests decode with "
        f"{step}",
    )


def _find_model(settings: Settings) -> Check:
    """Whether the model can be found without loading it."""
    from generation.model.loading import default_model_path, gguf_cache_folder

    spec = settings.model or str(default_model_path())
    path = Path(spec).expanduser()
    name = "bundled " + path.name if not settings.model else spec
    hint = "set MUSE_MODEL to a Hugging Face id, a local folder or a .gguf file"
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            return Check("model", False, f"{name} does not exist", hint)
        if (gguf_cache_folder(path, settings.cache_dir) / "muse.json").is_file():
            return Check("model", True, f"{name}: converted copy cached in {settings.cache_dir}")
        return Check("model", True, f"{name} exists; the first start converts it once (~20 s)")
    if path.is_dir():
        if not (path / "config.json").is_file():
            return Check("model", False, f"the folder {spec} has no config.json", hint)
        return Check("model", True, f"folder {spec}")
    if spec.startswith(("/", ".", "~")) or path.exists():
        return Check("model", False, f"MUSE_MODEL={spec} is not a folder or a .gguf file", hint)
    return _hub_model(spec)


def _hub_model(repo_id: str) -> Check:
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except ValueError as exc:  # not a valid repository id
        return Check("model", False, f"MUSE_MODEL={repo_id}: {exc}", "check MUSE_MODEL")
    if isinstance(cached, str):
        return Check("model", True, f"{repo_id} is in the Hugging Face cache")
    if os.environ.get("HF_HUB_OFFLINE", "").strip() in {"1", "true", "yes", "on"}:
        return Check(
            "model",
            False,
            f"{repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set",
            "unset HF_HUB_OFFLINE once (or run `muse doctor --load`) to download it",
        )
    return Check("model", True, f"{repo_id}: downloaded at first start (needs internet)")


def check_server(settings: Settings) -> Check:
    """`MUSE_BACKEND=openai`: the server answers `GET /models` (and lists the model)."""
    from generation.errors import ModelLoadError
    from generation.remote.backend import OpenAIBackend, RemoteConfig

    hint = "MUSE_OPENAI_BASE_URL is the server's API base, e.g. http://127.0.0.1:8000/v1"
    config = RemoteConfig(
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key.reveal(),
        model=settings.openai_model,
        ready_timeout_s=SERVER_TIMEOUT_S,
    )

    async def ask() -> str:
        engine = OpenAIBackend(config)
        try:
            return (await engine.wait_ready()).model_id
        finally:
            await engine.aclose()

    try:
        served = asyncio.run(ask())
    except ModelLoadError as exc:
        return Check("server", False, str(exc), hint)
    where = config.base_url.rstrip("/")
    if settings.openai_model and served != settings.openai_model:
        return Check(
            "server",
            False,
            f"{where} answers but does not list MUSE_OPENAI_MODEL={settings.openai_model}",
            f"set MUSE_OPENAI_MODEL={served} (or leave it empty)",
        )
    return Check("server", True, f"{where}/models answers; model {served}")


def check_database(path: Path | str) -> Check:
    if isinstance(path, str):
        return check_postgres(path)
    found = check_file(path)
    if not found.exists:
        folder = path.parent if str(path.parent) else Path(".")
        if _creatable(folder):
            return Check("database", True, f"{path} not created yet: `muse run` creates it (0600)")
        return Check(
            "database", False, f"{path} does not exist and {folder} is not writable", "set MUSE_DB"
        )
    if found.problems:
        return Check("database", False, f"{path}: {'; '.join(found.problems)}", _db_hint(found))
    schema = f"schema {found.version} of {found.supported}"
    if found.version < found.supported:
        schema += " (the next start migrates it)"
    return Check("database", True, f"{path}: {schema}, integrity ok, mode {found.mode:04o}")


def check_postgres(url: str) -> Check:
    """A `postgresql://` MUSE_DB: reachable, server version, schema (password never shown)."""
    found = check_database_server(url)
    if found.problem and not found.server:
        return Check(
            "database", False, found.problem,
            "check the host, port and database in MUSE_DB, and the password "
            "(in the URL, PGPASSWORD or ~/.pgpass)",
        )  # fmt: skip
    where = f"{found.url}: PostgreSQL {found.server}"
    if found.problem:
        return Check("database", False, f"{where}, {found.problem}", "upgrade Muse")
    if found.version == 0:
        return Check("database", True, f"{where}, no schema yet: `muse run` creates it")
    schema = f"schema {found.version} of {found.supported}"
    if found.version < found.supported:
        schema += " (the next start migrates it)"
    return Check("database", True, f"{where}, {schema}")


def _db_hint(found: FileCheck) -> str:
    if found.deleted_wal:
        pids = ", ".join(str(pid) for pid, _ in found.deleted_wal)
        return f"stop process {pids} and start Muse again; then run muse doctor once more"
    if found.mode & 0o077:
        return f"chmod 600 {found.path}"
    return "restore it from a backup (muse backup makes one)"


def _creatable(folder: Path) -> bool:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return os.access(folder, os.W_OK)


def _marks() -> dict[bool, str]:
    """✓ / ✗ where the terminal can show them, else OK / FAIL."""
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "✓✗".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return {True: "OK  ", False: "FAIL"}
    return {True: "✓", False: "✗"}
