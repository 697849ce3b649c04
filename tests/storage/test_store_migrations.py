"""Opening a file: creation mode, WAL, migrations, refusal of newer files, crash recovery."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import sys
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest

from storage.errors import DatabaseAlreadyOpen, DatabaseTooNew
from storage.migrations import MIGRATIONS, migrate, schema_version
from storage.store import Store

REPO = Path(__file__).resolve().parents[2]
TABLES = {
    "meta",
    "users",
    "guild_settings",
    "conversations",
    "generations",
    "feedback",
    "feedback_events",
    "comparisons",
    "personas",
    "models",
    "loops",
    "loop_events",
}


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(Path(path).stat().st_mode)


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


async def test_new_file_is_private_wal_and_fully_migrated(db_path: Path) -> None:
    async with Store.open(db_path) as store:
        await store.mark_notice_shown(1)  # makes SQLite create the -wal and -shm files
        for suffix in ("", "-wal", "-shm"):
            mode = _mode(f"{db_path}{suffix}")
            assert mode == 0o600, (suffix, oct(mode))
        pragmas = await store._write(
            lambda conn: [
                conn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "foreign_keys")
            ]
        )
        assert pragmas == ["wal", 1, 1]  # synchronous 1 = NORMAL
    with sqlite3.connect(db_path) as conn:
        assert schema_version(conn) == len(MIGRATIONS)
        salt = conn.execute("SELECT value FROM meta WHERE key = 'export_salt'").fetchone()[0]
    assert len(salt) == 32
    assert _tables(db_path) >= TABLES


async def test_existing_file_keeps_its_mode(db_path: Path) -> None:
    os.close(os.open(db_path, os.O_CREAT | os.O_WRONLY, 0o640))
    os.chmod(db_path, 0o640)
    async with Store.open(db_path):
        pass
    assert _mode(db_path) == 0o640


@pytest.mark.parametrize("version", range(len(MIGRATIONS)))
async def test_migrates_from_every_earlier_version(db_path: Path, version: int) -> None:
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        migrate(conn, MIGRATIONS[:version])
        assert schema_version(conn) == version
    async with Store.open(db_path) as store:
        assert await store.mark_notice_shown(5) is True
    with sqlite3.connect(db_path) as conn:
        assert schema_version(conn) == len(MIGRATIONS)
    assert _tables(db_path) >= TABLES


async def test_a_version_2_file_with_data_upgrades_to_3(db_path: Path) -> None:
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        migrate(conn, MIGRATIONS[:2])
        conn.execute(
            """INSERT INTO generations (id, root_id, user_id, task, messages_json, model_id,
                   output, status, created_utc, followup_message_ids_json)
               VALUES (1, 1, 7, 'story', '[{"role":"user","content":"hi"}]', 'm', 'old', 'done',
                   '2025-01-01T00:00:00.000Z', '[55]')"""
        )
        conn.execute(
            """INSERT INTO guild_settings (guild_id, settings_json, updated_utc)
               VALUES (5, '{"temperature": 0.5}', '2025-01-01T00:00:00.000Z')"""
        )
        assert "source" not in {r[1] for r in conn.execute("PRAGMA table_info(generations)")}
    async with Store.open(db_path) as store:
        old = await store.get_generation(1)
        assert (old.source, old.output, old.followup_message_ids) == ("model", "old", (55,))
        assert (await store.get_guild_settings(5)).default_model is None
        edit = await store.record_edit(1, 8, "new", guild_id=None, channel_id=None)
        assert (await store.get_generation(edit)).source == "edit"
        assert (await store.set_persona(5, 6, "Bard", "Speak in verse.")).name == "Bard"
        assert await store.list_models() == []
    with sqlite3.connect(db_path) as conn:
        assert schema_version(conn) == len(MIGRATIONS)
        columns = {r[1]: r for r in conn.execute("PRAGMA table_info(generations)")}
        assert columns["source"][2:5] == ("TEXT", 1, "'model'")  # type, NOT NULL, default
        models = [r[1] for r in conn.execute("PRAGMA table_info(models)")]
        assert models == [
            "name", "base_model", "adapter_path", "method", "created_utc", "data_json",
            "metrics_json", "retired_utc", "owner_guild_id", "contributors_json", "retired_reason",
        ]  # fmt: skip
        personas = [r[1] for r in conn.execute("PRAGMA table_info(personas)")]
        assert personas == ["channel_id", "guild_id", "name", "prompt", "updated_utc"]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _synthetic() -> list:
    def one(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE a (x INTEGER)")

    def two(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO a (x) VALUES (2)")

    def three(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE a ADD COLUMN y TEXT")
        conn.execute("UPDATE a SET y = 'three'")

    return [one, two, three]


@pytest.mark.parametrize("start", range(4))
def test_synthetic_migrations_run_in_order_from_any_version(tmp_path: Path, start: int) -> None:
    migrations = _synthetic()
    with sqlite3.connect(tmp_path / "s.db", isolation_level=None) as conn:
        migrate(conn, migrations[:start])
        assert schema_version(conn) == start
        assert migrate(conn, migrations) == 3
        assert conn.execute("SELECT x, y FROM a").fetchall() == [(2, "three")]
        assert migrate(conn, migrations) == 3  # nothing left to do: idempotent


def test_failed_migration_rolls_back_with_its_version(tmp_path: Path) -> None:
    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE b (x INTEGER)")
        raise RuntimeError("boom in the middle")

    migrations = [*_synthetic()[:2], half_done]
    with sqlite3.connect(tmp_path / "s.db", isolation_level=None) as conn:
        with pytest.raises(RuntimeError, match="boom"):
            migrate(conn, migrations)
        assert schema_version(conn) == 2  # the first two committed, the third not at all
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "b" not in tables
        assert not conn.in_transaction


async def test_refuses_a_file_from_a_newer_muse(db_path: Path) -> None:
    async with Store.open(db_path):
        pass
    newer = len(MIGRATIONS) + 1
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {newer}")
    with pytest.raises(DatabaseTooNew) as caught:
        await Store.open(db_path)
    assert caught.value.found == newer and caught.value.supported == len(MIGRATIONS)
    assert f"schema version {newer}" in str(caught.value)
    assert "Upgrade Muse" in str(caught.value)
    with sqlite3.connect(db_path) as conn:
        assert schema_version(conn) == newer  # untouched


OPEN_ONCE = """
import asyncio, sys
from storage.store import Store

async def main():
    async with Store.open(sys.argv[1]):
        pass

asyncio.run(main())
"""


async def test_two_processes_opening_a_new_file_at_once(db_path: Path) -> None:
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", OPEN_ONCE, str(db_path), cwd=REPO, stderr=PIPE
        )
        for _ in range(2)
    ]
    for child in children:
        _, err = await child.communicate()
        assert child.returncode == 0, err.decode()
    with sqlite3.connect(db_path) as conn:
        assert schema_version(conn) == len(MIGRATIONS)
        assert conn.execute("SELECT COUNT(*) FROM meta").fetchone()[0] == 1


async def test_a_second_open_in_one_process_is_refused(db_path: Path) -> None:
    opened = await asyncio.gather(Store.open(db_path), Store.open(db_path), return_exceptions=True)
    stores = [o for o in opened if isinstance(o, Store)]
    refused = [o for o in opened if isinstance(o, DatabaseAlreadyOpen)]
    assert len(stores) == 1 and len(refused) == 1, opened
    assert "already open in this process" in str(refused[0])
    link = db_path.with_name("another-name.db")
    link.symlink_to(db_path)
    with pytest.raises(DatabaseAlreadyOpen):  # the same file by another name
        await Store.open(link)
    await stores[0].mark_notice_shown(1)  # the first store still works
    await stores[0].close()
    async with Store.open(link) as again:  # closed: the file may be opened again
        assert not await again.mark_notice_shown(1)


async def test_running_generations_become_interrupted_on_reopen(db_path, clock) -> None:
    async with Store.open(db_path, clock=clock) as store:
        running = await store.record_generation(
            user_id=1, task="story", messages=[{"role": "user", "content": "hi"}],
            params={"seed": 1}, model_id="m",
        )  # fmt: skip
        finished = await store.record_generation(
            user_id=1, task="story", messages=[{"role": "user", "content": "hi"}],
            params={"seed": 2}, model_id="m",
        )  # fmt: skip
        await store.finish_generation(finished, "ok", "stop", 1, 1, 1.0, 2.0)
    async with Store.open(db_path, mark_interrupted=False) as store:
        assert (await store.get_generation(running)).status == "running"
    async with Store.open(db_path, clock=clock) as store:
        assert (await store.get_generation(running)).status == "interrupted"
        assert (await store.get_generation(running)).finished_utc == clock.now
        assert (await store.get_generation(finished)).status == "done"
