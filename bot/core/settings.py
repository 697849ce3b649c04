"""Muse's settings: the environment, or a `.env` file (python-dotenv); the environment wins.

Names and defaults are those of docs/settings.md. The token is held in a field that never prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import load_dotenv

from generation.model.memory import parse_memory
from storage.location import database_target


class SettingsError(ValueError):
    """A setting has a value Muse cannot use; the message names it."""


class Secret(str):
    """A string whose repr and str never show its value (the Discord token)."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"

    def __str__(self) -> str:
        return "***" if self else ""

    def reveal(self) -> str:
        return str.__str__(self)


# generation.model.loading.WEIGHTS, without importing torch
WEIGHTS = ("auto", "fp32", "bf16", "int8", "int4")


@dataclass(frozen=True, slots=True)
class Settings:
    discord_token: Secret = field(default_factory=lambda: Secret(""))
    discord_api_base: str = ""
    discord_gateway_url: str = ""
    guild_ids: tuple[int, ...] = ()
    model: str = ""
    device: str = "auto"
    db_path: Path | str = Path("muse.db")  # an SQLite file, or a postgresql:// URL (text)
    cache_dir: Path = Path.home() / ".cache" / "muse"
    presets_path: str = ""
    queue_size: int = 64
    max_batch: int = 16
    user_per_minute: int = 6
    guild_concurrency: int = 0
    max_tokens: int = 512
    timeout_s: float = 120.0
    shutdown_grace_s: float = 10.0  # MUSE_SHUTDOWN_GRACE_S: running texts may finish on SIGTERM
    retention_days: int = 0
    message_content: bool = False
    backend: str = "local"
    openai_base_url: str = ""
    openai_api_key: Secret = field(default_factory=lambda: Secret(""))
    openai_model: str = ""
    shards: str = ""
    shard_ids: tuple[int, ...] = ()
    log_level: str = "INFO"
    adapters_dir: Path = Path("adapters")  # MUSE_ADAPTERS_DIR: where `muse tune` writes
    engine_process: str = "auto"  # MUSE_ENGINE_PROCESS: auto / 0 / 1
    serve_api_key: Secret = field(default_factory=lambda: Secret(""))  # MUSE_SERVE_API_KEY
    threads: int = 0  # MUSE_THREADS: the local engine's CPU threads (0: torch's default)
    weights: str = "auto"  # MUSE_WEIGHTS: auto / fp32 / bf16 / int8 / int4
    memory: str = "auto"  # MUSE_MEMORY: auto, or the model's budget as a size (4GiB)
    loop_min_examples: int = 50  # MUSE_LOOP_MIN_EXAMPLES: new training rows before a tune
    loop_min_votes: int = 30  # MUSE_LOOP_MIN_VOTES: final arena votes before a decision
    loop_confidence: float = 0.95  # MUSE_LOOP_CONFIDENCE: p(better) that promotes (or retires)
    loop_max_days: float = 14.0  # MUSE_LOOP_MAX_DAYS: a challenger undecided by then is retired
    loop_check_s: float = 300.0  # MUSE_LOOP_CHECK_S: how often the loop looks at every guild
    loop_max_steps: int = 0  # MUSE_LOOP_MAX_STEPS: a loop tune's optimizer steps (0: its epochs)
    openai_runtime_lora: bool = False  # MUSE_OPENAI_RUNTIME_LORA: load adapters into vLLM

    @classmethod
    def load(cls, env_file: str | Path | None = ".env") -> Settings:
        """Read the settings; `.env` fills in only what the environment does not set."""
        if env_file and Path(env_file).is_file():
            load_dotenv(env_file, override=False)
        env = os.environ
        return cls(
            discord_token=Secret(env.get("DISCORD_TOKEN", "").strip()),
            discord_api_base=env.get("DISCORD_API_BASE", ""),
            discord_gateway_url=env.get("DISCORD_GATEWAY_URL", ""),
            guild_ids=_ints("MUSE_GUILD_IDS", env.get("MUSE_GUILD_IDS", "")),
            model=env.get("MUSE_MODEL", ""),
            device=env.get("MUSE_DEVICE", "auto"),
            db_path=database_target(env.get("MUSE_DB") or "muse.db"),
            cache_dir=Path(
                env.get("MUSE_CACHE_DIR") or Path.home() / ".cache" / "muse"
            ).expanduser(),
            presets_path=env.get("MUSE_PRESETS", ""),
            queue_size=_int("MUSE_QUEUE_SIZE", 64, minimum=1),
            max_batch=_int("MUSE_MAX_BATCH", 16, minimum=1),
            user_per_minute=_int("MUSE_USER_PER_MINUTE", 6, minimum=0),
            guild_concurrency=_int("MUSE_GUILD_CONCURRENCY", 0, minimum=0),
            max_tokens=_int("MUSE_MAX_TOKENS", 512, minimum=1),
            timeout_s=float(_int("MUSE_TIMEOUT_S", 120, minimum=1)),
            shutdown_grace_s=float(_int("MUSE_SHUTDOWN_GRACE_S", 10, minimum=0)),
            retention_days=_int("MUSE_RETENTION_DAYS", 0, minimum=0),
            message_content=_flag("MUSE_MESSAGE_CONTENT"),
            backend=_choice("MUSE_BACKEND", "local", ("local", "openai")),
            openai_base_url=env.get("MUSE_OPENAI_BASE_URL", ""),
            openai_api_key=Secret(env.get("MUSE_OPENAI_API_KEY", "")),
            openai_model=env.get("MUSE_OPENAI_MODEL", ""),
            shards=env.get("MUSE_SHARDS", ""),
            shard_ids=_ints("MUSE_SHARD_IDS", env.get("MUSE_SHARD_IDS", "")),
            log_level=_choice(
                "MUSE_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
            ),
            adapters_dir=Path(env.get("MUSE_ADAPTERS_DIR") or "adapters").expanduser(),
            engine_process=_choice("MUSE_ENGINE_PROCESS", "auto", ("auto", "0", "1")),
            serve_api_key=Secret(env.get("MUSE_SERVE_API_KEY", "").strip()),
            threads=_int("MUSE_THREADS", 0, minimum=0),
            weights=_choice("MUSE_WEIGHTS", "auto", WEIGHTS),
            memory=_memory("MUSE_MEMORY"),
            loop_min_examples=_int("MUSE_LOOP_MIN_EXAMPLES", 50, minimum=1),
            loop_min_votes=_int("MUSE_LOOP_MIN_VOTES", 30, minimum=1),
            loop_confidence=_float("MUSE_LOOP_CONFIDENCE", 0.95, low=0.5, high=0.9999),
            loop_max_days=_float("MUSE_LOOP_MAX_DAYS", 14.0, low=0.0, high=3650.0),
            loop_check_s=_float("MUSE_LOOP_CHECK_S", 300.0, low=0.05, high=86400.0),
            loop_max_steps=_int("MUSE_LOOP_MAX_STEPS", 0, minimum=0),
            openai_runtime_lora=_flag("MUSE_OPENAI_RUNTIME_LORA"),
        )


def _int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number.") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, not {value}.")
    return value


def _float(name: str, default: float, low: float, high: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number.") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be from {low:g} to {high:g}, not {raw}.")
    return value


def _memory(name: str) -> str:
    raw = os.environ.get(name, "").strip() or "auto"
    try:
        parse_memory(raw)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return raw


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in {"1", "true", "yes"}


def _ints(name: str, raw: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in raw.replace(" ", "").split(",") if part)
    except ValueError:
        raise SettingsError(f"{name} must be a comma-separated list of numeric ids.") from None


def _choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(name, "").strip() or default
    if name == "MUSE_LOG_LEVEL":
        value = value.upper()
    if value not in allowed:
        raise SettingsError(f"{name}={value!r} must be one of {', '.join(allowed)}.")
    return value
