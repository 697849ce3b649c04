"""`muse backup PATH` while the bot writes, and `muse doctor`'s checks."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import stat
from pathlib import Path

import pytest

from bot.cli import main as cli
from generation.model import native_build, native_step
from storage.migrations import MIGRATIONS
from storage.store import Store
from tests.bot.fake_openai import MODEL, FakeOpenAI
from tests.wal_holder import holding_a_deleted_wal

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.c2VjcmV0LXRva2VuLXZhbHVlLWRvLW5vdC1wcmludA"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No Muse settings from the test runner; the working directory (and `.env`) is tmp_path."""
    for name in list(os.environ):
        if name.startswith(("MUSE_", "DISCORD_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MUSE_DB", str(tmp_path / "muse.db"))
    return monkeypatch


async def record(store: Store, n: int, size: int = 200) -> int:
    generation_id = await store.record_generation(
        user_id=1000 + n % 7,
        task="story",
        messages=[{"role": "user", "content": f"prompt {n} " + "x" * size}],
        params={"seed": n},
        model_id="m",
        guild_id=42,
    )
    await store.finish_generation(generation_id, "y" * size, "stop", 10, 20, 1.0, 2.0)
    return generation_id


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def checked_copy(path: Path) -> int:
    """Assert `path` is a healthy, private, complete copy; return its generations."""
    assert mode(path) == 0o600
    assert not list(path.parent.glob(f".{path.name}.partial-*"))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        return conn.execute("SELECT count(*) FROM generations").fetchone()[0]


# --- backup --------------------------------------------------------------------------------


async def test_backup_is_consistent_while_a_writer_keeps_writing(env, tmp_path: Path):
    db, copy, copy2 = tmp_path / "muse.db", tmp_path / "copy.db", tmp_path / "copy2.db"
    async with Store.open(db) as store:
        for start in range(0, 3000, 500):  # about 6 MB, so the copy takes a while
            await asyncio.gather(*(record(store, n, 1000) for n in range(start, start + 500)))
        written = 3000
        stop = asyncio.Event()

        async def writer() -> None:
            nonlocal written
            while not stop.is_set():
                await record(store, written)
                written += 1

        task = asyncio.create_task(writer())
        await asyncio.sleep(0.05)
        before = written
        code = await asyncio.to_thread(cli.main, ["backup", str(copy)])
        during_cli = written - before
        await store.backup(copy2)  # the Store's own method, same API
        stop.set()
        await task
        during = written - before
    assert code == 0 and during_cli > 0 and during > during_cli  # the bot kept writing

    for path in (copy, copy2):
        assert 3000 < checked_copy(path) < written  # a snapshot taken while writes went on
        async with Store.open(path, mark_interrupted=False) as restored:
            assert (await restored.get_generation(1)).output == "y" * 1000
            assert len(await restored.recent_generations(1000, limit=5)) == 5


async def test_backup_refuses_to_overwrite_unless_forced(env, tmp_path: Path, capsys):
    async with Store.open(tmp_path / "muse.db") as store:
        await record(store, 1)
    target = tmp_path / "existing.db"
    target.write_bytes(b"keep me")

    assert cli.main(["backup", str(target)]) == 1
    assert "existing.db already exists; pass --force to overwrite it" in capsys.readouterr().err
    assert target.read_bytes() == b"keep me"

    assert cli.main(["backup", str(target), "--force"]) == 0
    assert f"to {target}" in capsys.readouterr().err
    with sqlite3.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM generations").fetchone() == (1,)
    assert mode(target) == 0o600


def test_backup_errors_are_clear(env, tmp_path: Path, capsys):
    assert cli.main(["backup", str(tmp_path / "copy.db")]) == 1
    err = capsys.readouterr().err
    assert f"muse backup: error: there is no database at {tmp_path / 'muse.db'}" in err
    assert not (tmp_path / "copy.db").exists()

    sqlite3.connect(tmp_path / "muse.db").close()
    assert cli.main(["backup", str(tmp_path / "nowhere" / "copy.db")]) == 1
    assert "no such directory" in capsys.readouterr().err
    assert cli.main(["backup", str(tmp_path / "muse.db"), "--force"]) == 1
    assert "is the database itself" in capsys.readouterr().err
    assert cli.main(["backup", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err


# --- doctor --------------------------------------------------------------------------------


def doctor(capsys, *args: str) -> tuple[int, list[str]]:
    code = cli.main(["doctor", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines() + err.splitlines()


async def make_db(path: Path) -> None:
    async with Store.open(path) as store:
        await record(store, 1)


async def test_doctor_passes_with_a_model_server(env, tmp_path: Path, capsys):
    await make_db(tmp_path / "muse.db")
    async with FakeOpenAI() as llm:
        env.setenv("DISCORD_TOKEN", TOKEN)
        env.setenv("MUSE_BACKEND", "openai")
        env.setenv("MUSE_OPENAI_BASE_URL", llm.base_url)
        env.setenv("MUSE_OPENAI_API_KEY", "sk-secret-key")
        env.setenv("MUSE_SHARDS", "4")
        env.setenv("MUSE_SHARD_IDS", "2,3")
        code, lines = await asyncio.to_thread(doctor, capsys)
    assert code == 0, lines
    assert [line.split()[:2] for line in lines[:4]] == [
        ["✓", "settings"],
        ["✓", "token"],
        ["✓", "server"],
        ["✓", "database"],
    ]
    assert "shards 2,3 of 4 in this process" in lines[0]
    assert f"looks valid ({len(TOKEN)} characters" in lines[1]
    assert f"{llm.base_url}/models answers; model {MODEL}" in lines[2]
    assert f"schema {len(MIGRATIONS)} of {len(MIGRATIONS)}, integrity ok, mode 0600" in lines[3]
    assert lines[4] == "4 of 4 checks passed."
    text = "\n".join(lines)
    assert TOKEN not in text and TOKEN.split(".")[2] not in text and "sk-secret" not in text


def test_doctor_loads_the_local_model(env, tmp_path: Path, capsys):
    env.setenv("DISCORD_TOKEN", TOKEN)
    code, lines = doctor(capsys)
    assert code == 0, lines
    assert lines[2].startswith("✓ model") and ".gguf" in lines[2]
    assert "not created yet: `muse run` creates it" in lines[3]
    assert not (tmp_path / "muse.db").exists()  # the doctor creates nothing

    code, lines = doctor(capsys, "--load")
    assert code == 0 and "loaded SmolLM2-135M-Instruct" in lines[2]
    assert " on cpu (int4 + torch.float32) in " in lines[2]  # MUSE_WEIGHTS=auto, a Q4 GGUF
    # A compiler is here: it built and ran once in a child process.
    kind = native_step.compiled().int4_rows_kind()
    way = {
        "amx": "widen the int4 weights as they multiply, on AMX",
        "avx512_vnni": "multiply the int4 weights as they are, on AVX512-VNNI",
        "avx512_bf16": "widen the int4 weights as they multiply, on AVX512-BF16",
    }.get(kind)
    amx = f"; many rows {way}" if way else ""
    assert lines[2].endswith(
        f"decode with the C++ step (built and run first in a child process on this CPU{amx})"
    )
    env.setenv("MUSE_NATIVE_STEP", "0")
    code, lines = doctor(capsys, "--load")
    assert code == 0 and lines[2].endswith("with the Python step (MUSE_NATIVE_STEP=0)")
    assert TOKEN not in "\n".join(lines)


def test_doctor_load_prints_the_resident_memory_and_the_budget_s_choice(env, capsys):
    env.setenv("DISCORD_TOKEN", TOKEN)
    env.setenv("MUSE_MEMORY", "1MiB")  # no room for the bf16 copy
    code, lines = doctor(capsys, "--load")
    assert code == 0, lines
    resident = re.search(r"resident memory (\d+\.\d\d) GiB", lines[2])
    assert resident is not None and 0.1 < float(resident.group(1)) < 4.0, lines[2]
    assert "the bf16 copy for prompts not kept (MUSE_MEMORY=1MiB)" in lines[2]
    env.setenv("MUSE_MEMORY", "64GiB")
    code, lines = doctor(capsys, "--load")
    assert code == 0 and "the bf16 copy for prompts kept (MUSE_MEMORY=64GiB)" in lines[2]


def test_doctor_says_why_the_c_step_is_not_used(env, tmp_path: Path, capsys):
    """A build folder others may write to is not loaded from, and the doctor says so."""
    env.setenv("DISCORD_TOKEN", TOKEN)
    folder = native_build.build_folder(tmp_path / "extensions")
    native_build.make_folder(folder)
    os.chmod(folder, 0o777)
    env.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    native_step.build.cache_clear()
    try:
        code, lines = doctor(capsys, "--load")
    finally:
        native_step.build.cache_clear()
    assert code == 0, lines
    assert "decode with the Python step (the C++ step is not used: " in lines[2]
    assert f"{folder} is writable by group or others (mode 777)" in lines[2]


async def test_doctor_fails_each_broken_check_with_a_hint(env, tmp_path: Path, capsys):
    db = tmp_path / "muse.db"
    await make_db(db)
    db.chmod(0o644)
    bad_token = "Bot " + TOKEN
    env.setenv("DISCORD_TOKEN", bad_token)
    env.setenv("MUSE_MODEL", str(tmp_path / "missing.gguf"))
    code, lines = doctor(capsys)
    assert code == 1, lines
    text = "\n".join(lines)
    assert TOKEN not in text and TOKEN.split(".")[0] not in text
    assert lines[0].startswith("✓ settings")
    assert lines[1].startswith("✗ token") and "starts with 'Bot '" in lines[1]
    assert "hint: set only the token" in lines[2]
    assert lines[3].startswith("✗ model") and "missing.gguf does not exist" in lines[3]
    assert lines[5].startswith("✗ database") and "mode 0644: others may read it" in lines[5]
    assert f"hint: chmod 600 {db}" in lines[6]
    assert lines[-1] == "1 of 4 checks passed"

    env.setenv("DISCORD_TOKEN", "not a token at all")
    db.write_bytes(b"this is not a database, just text" * 200)
    db.chmod(0o600)
    code, lines = doctor(capsys)
    assert code == 1 and "not a token" not in "\n".join(lines)
    assert "does not look like a bot token (18 characters" in lines[1]
    assert "cannot be read as SQLite" in "\n".join(lines)


async def test_doctor_finds_a_process_writing_to_a_deleted_wal(env, tmp_path: Path, capsys):
    env.setenv("DISCORD_TOKEN", TOKEN)
    with holding_a_deleted_wal(tmp_path / "muse.db") as pid:
        code, lines = doctor(capsys)
    assert code == 1, lines
    (line,) = [n for n, text in enumerate(lines) if text.startswith("✗ database")]
    assert f"process {pid} writes to a deleted muse.db-wal" in lines[line]
    assert f"hint: stop process {pid} and start Muse again" in lines[line + 1]


async def test_doctor_reports_an_unreachable_or_wrong_model_server(env, capsys):
    env.setenv("DISCORD_TOKEN", TOKEN)
    env.setenv("MUSE_BACKEND", "openai")
    async with FakeOpenAI() as llm:
        env.setenv("MUSE_OPENAI_BASE_URL", llm.base_url)
        env.setenv("MUSE_OPENAI_MODEL", "some-other-model")
        code, lines = await asyncio.to_thread(doctor, capsys)
        assert code == 1
        assert "does not list MUSE_OPENAI_MODEL=some-other-model" in lines[2]
        assert f"hint: set MUSE_OPENAI_MODEL={MODEL}" in lines[3]
    env.setenv("MUSE_OPENAI_BASE_URL", llm.base_url)  # closed now
    code, lines = await asyncio.to_thread(doctor, capsys)
    assert code == 1 and lines[2].startswith("✗ server") and "is not answering" in lines[2]


def test_doctor_reports_settings_that_do_not_parse(env, capsys):
    env.setenv("MUSE_QUEUE_SIZE", "lots")
    code, lines = doctor(capsys)
    assert code == 1
    assert lines[0] == "✗ settings  MUSE_QUEUE_SIZE='lots' is not a whole number."
    assert lines[-1] == "0 of 1 checks passed"

    env.delenv("MUSE_QUEUE_SIZE")
    env.setenv("MUSE_SHARDS", "4")
    env.setenv("MUSE_SHARD_IDS", "0,9")
    code, lines = doctor(capsys)
    assert code == 1 and "names shard 9, but MUSE_SHARDS=4 has shards 0 to 3" in lines[0]
