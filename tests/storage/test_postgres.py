"""PostgreSQL as Muse's database: migrations, the password kept secret, `db copy`, backups.

The store's behaviour on PostgreSQL is tested by every test that takes `store` (see conftest);
these are what differs: the server, the URL and moving data between the engines.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sqlite3
import time
from pathlib import Path

import psycopg
import pytest

from storage.copy import CopyError, copy_database
from storage.errors import ConnectionLost, DatabaseTooNew, DatabaseUnreachable, StorageError
from storage.export import FORMATS, ExportFilters
from storage.maintenance import backup_file
from storage.migrations import MIGRATIONS, schema_version
from storage.pg_conn import PgConnection, try_advisory_lock
from storage.rows import ModelRecord
from storage.store import Store
from storage.writer import Writer
from tests.postgres_server import PASSWORD, USER, PostgresServer


def _leftovers(folder: Path) -> list[str]:
    """Temporary (dot) files a backup left behind."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def _version(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT version FROM muse_schema").fetchone()[0]


async def test_migrations_run_once_in_a_transaction_and_a_newer_database_is_refused(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database()
    async with Store.open(url):
        pass
    assert _version(url) == len(MIGRATIONS)

    def broken(conn) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("migration failed half way")

    with pytest.raises(RuntimeError, match="half way"):
        await Store.open(url, migrations=(*MIGRATIONS, broken))
    assert _version(url) == len(MIGRATIONS)  # rolled back: no version bump, no table
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone()[0] is None
        conn.execute("UPDATE muse_schema SET version = version + 1")
    with pytest.raises(DatabaseTooNew) as refused:
        await Store.open(url)
    assert refused.value.found == len(MIGRATIONS) + 1
    assert PASSWORD not in str(refused.value)


async def test_the_password_comes_from_the_url_pgpassword_or_pgpass_and_is_never_shown(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    url = postgres_server.create_database()
    bare = url.replace(f":{PASSWORD}@", "@")
    wrong = url.replace(PASSWORD, "not-the-Pa55word")
    with pytest.raises(DatabaseUnreachable) as refused:
        await Store.open(wrong)
    assert "not-the-Pa55word" not in str(refused.value)
    assert f"{USER}:***@" in str(refused.value)
    assert "password authentication failed" in str(refused.value)

    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    async with Store.open(bare) as store:
        assert await store.mark_notice_shown(1)
    monkeypatch.delenv("PGPASSWORD")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{postgres_server.port}:*:{USER}:{PASSWORD}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    async with Store.open(bare) as store:
        assert not await store.mark_notice_shown(1)
        out = io.StringIO()
        await store.export("raw", out)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert PASSWORD not in logged and "not-the-Pa55word" not in logged
    assert PASSWORD not in out.getvalue()


async def _every_kind_of_row(store: Store) -> None:
    """Beside `edited`'s generations, ratings, votes and edits: the other tables."""
    conversation = await store.create_conversation(900, user_id=1, guild_id=100, channel_id=300)
    await store.record_generation(
        user_id=1, task="chat", messages=[{"role": "user", "content": "hi"}], params={},
        model_id="smollm2-135m", conversation_id=conversation.id, guild_id=100,
    )  # fmt: skip
    await store.update_guild_settings(100, default_model="tuned-1", temperature=0.5)
    await store.mark_notice_shown(2)
    await store.set_persona(100, 300, "Pirate", "Talk like a pirate.")
    await store.register_model(
        ModelRecord("tuned-1", "smollm2-135m", Path("/adapters/1"), "sft", contributors=("x",))
    )
    await store.update_loop(100, enabled=True, channel_id=300, progress={"step": 3})
    await store.add_loop_event(100, "tuned", "tuned-1", "enough rows", {"loss": 1.5})
    await store.take_slot(1, 100, per_minute=5, guild_cap=3, now_s=time.time())  # a live limit


async def _exports_of(store: Store) -> dict[str, str]:
    """Every format, with and without self-ratings."""
    found = {}
    for fmt in FORMATS:
        for include_self in (True, False):
            out = io.StringIO()
            await store.export(fmt, out, ExportFilters(include_self=include_self))
            found[f"{fmt}/{include_self}"] = out.getvalue()
    return found


async def _exports(target: Path | str) -> dict[str, str]:
    async with Store.open(target, mark_interrupted=False) as store:
        return await _exports_of(store)


async def test_db_copy_round_trips_every_kind_of_row_sqlite_postgres_sqlite(
    store: Store, edited: dict[str, int], db_path: Path, tmp_path: Path,
    postgres_server: PostgresServer,
) -> None:  # fmt: skip
    await _every_kind_of_row(store)
    url = postgres_server.create_database()
    there = copy_database(db_path, url)
    back = copy_database(url, tmp_path / "back.db")
    assert there == back
    assert there["generations"] == len(edited) + 1 and there["loop_events"] == 1
    assert all(there[table] for table in there), there  # every table has rows
    before = await _exports_of(store)
    assert before["raw/True"].count("\n") > 10
    assert await _exports(url) == before
    assert await _exports(tmp_path / "back.db") == before
    async with Store.open(url) as moved:  # ids go on after the copied ones
        assert (
            await moved.record_generation(
                user_id=1, task="story", messages=[], params={}, model_id="m"
            )
            == max(edited.values()) + 2
        )


async def test_db_copy_refuses_a_target_with_rows_and_a_failure_leaves_it_as_it_was(
    store: Store, rated: dict[str, int], db_path: Path, tmp_path: Path,
    postgres_server: PostgresServer,
) -> None:  # fmt: skip
    url = postgres_server.create_database()
    async with Store.open(url) as other:
        await other.mark_notice_shown(77)
    with pytest.raises(CopyError, match="already holds rows.*--force"):
        copy_database(db_path, url)
    with psycopg.connect(url) as conn:  # a target that cannot take one of the rows
        conn.execute("ALTER TABLE generations ADD CONSTRAINT no_o9 CHECK (output != 'O9')")
    with pytest.raises(CopyError, match="no_o9") as failed:
        copy_database(db_path, url, force=True)
    assert PASSWORD not in str(failed.value)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT user_id FROM users").fetchall() == [(77,)]
        assert conn.execute("SELECT COUNT(*) FROM generations").fetchone()[0] == 0
        conn.execute("ALTER TABLE generations DROP CONSTRAINT no_o9")
    assert copy_database(db_path, url, force=True)["generations"] == len(rated)
    with pytest.raises(CopyError, match="already holds rows"):
        copy_database(url, db_path)
    missing = tmp_path / "new.db"
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE muse_schema SET version = version + 1")
    with pytest.raises(CopyError, match="schema version"):
        copy_database(url, missing)
    assert not missing.exists()


async def test_backup_of_a_postgres_database_is_a_consistent_sqlite_file(
    store: Store, rated: dict[str, int], tmp_path: Path, postgres_server: PostgresServer,
    db_path: Path,
) -> None:  # fmt: skip
    url = postgres_server.create_database()
    copy_database(db_path, url)
    target = tmp_path / "backup.db"
    size = backup_file(url, target)
    assert size == target.stat().st_size and target.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(target) as conn:
        assert schema_version(conn) == len(MIGRATIONS)
        assert conn.execute("SELECT COUNT(*) FROM generations").fetchone()[0] == len(rated)
    assert _leftovers(tmp_path) == []
    assert await _exports(target) == await _exports_of(store)


async def test_a_server_restart_loses_no_acknowledged_write_and_the_store_reconnects(
    postgres_server: PostgresServer, monkeypatch, prompt
) -> None:
    url = postgres_server.create_database()
    async with Store.open(url) as store:
        first = await store.record_generation(
            user_id=1, task="story", messages=prompt, params={}, model_id="m"
        )
        await asyncio.to_thread(postgres_server.stop)
        # Written while the server is down: it waits, and commits once the server is back.
        vote = asyncio.create_task(store.record_feedback(first, 2, thumbs="up"))
        await asyncio.sleep(1.5)
        assert not vote.done()
        await asyncio.to_thread(postgres_server.restart)
        assert (await asyncio.wait_for(vote, 30)).score == 1
        assert (await store.get_generation(first)).user_id == 1  # the reader reconnected too
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT user_id, thumbs FROM feedback").fetchall() == [(2, "up")]

        # Down for longer than the bound: the write fails (the bot says "not saved").
        monkeypatch.setattr("storage.pg_conn.RECONNECT_S", 1.0)
        await asyncio.to_thread(postgres_server.stop)
        try:
            with pytest.raises(DatabaseUnreachable) as lost:
                await asyncio.wait_for(store.record_feedback(first, 3, thumbs="down"), 30)
            assert PASSWORD not in str(lost.value)
        finally:
            await asyncio.to_thread(postgres_server.restart)
        assert (await store.record_feedback(first, 3, thumbs="down")).score == 0


async def test_a_failing_operation_in_a_group_is_undone_alone_on_postgres(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database()
    async with Store.open(url):
        pass  # migrated

    def note(conn, user_id: int) -> int:
        conn.execute(
            "INSERT INTO users (user_id, opted_out, updated_utc) VALUES (?, 0, 'now')", (user_id,)
        )
        return user_id

    def broken(conn) -> None:
        conn.execute("INSERT INTO users (user_id, opted_out, updated_utc) VALUES (9, 7, 'x')")

    writer = Writer(lambda: PgConnection(url), errors=(psycopg.Error, StorageError))
    await writer.start()
    try:
        jobs = [writer.submit(note, 1), writer.submit(broken), writer.submit(note, 2)]
        done = await asyncio.gather(*jobs, return_exceptions=True)
    finally:
        await writer.close()
    assert writer.groups == 1  # one transaction: the check violation was undone alone
    assert done[0] == 1 and done[2] == 2
    assert isinstance(done[1], psycopg.errors.CheckViolation)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT user_id FROM users ORDER BY 1").fetchall() == [(1,), (2,)]


async def test_a_transaction_whose_connection_was_lost_runs_again(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database()
    async with Store.open(url):
        pass  # migrated
    killed: list[int] = []

    def note_after_losing_the_connection(conn, user_id: int) -> int:
        conn.execute(
            "INSERT INTO users (user_id, opted_out, updated_utc) VALUES (?, 0, 'now')", (user_id,)
        )
        if not killed:  # the server drops this connection mid-transaction, once
            killed.append(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return user_id

    writer = Writer(
        lambda: PgConnection(url), errors=(psycopg.Error, StorageError), lost=(ConnectionLost,)
    )
    await writer.start()
    try:
        first = writer.submit(note_after_losing_the_connection, 1)
        second = writer.submit(note_after_losing_the_connection, 2)
        assert await asyncio.gather(first, second) == [1, 2]
    finally:
        await writer.close()
    assert killed
    with psycopg.connect(url) as conn:  # the lost transaction's row once, not twice
        assert conn.execute("SELECT user_id FROM users ORDER BY 1").fetchall() == [(1,), (2,)]


def test_an_advisory_lock_is_held_once_per_database(postgres_server: PostgresServer) -> None:
    """What `muse loop tune` takes on PostgreSQL: one holder across processes and machines."""
    url = postgres_server.create_database()
    with (
        try_advisory_lock(url, 7) as first,
        try_advisory_lock(url, 7) as second,
        try_advisory_lock(url, 8) as other,
    ):
        assert (first, second, other) == (True, False, True)
    with try_advisory_lock(url, 7) as again:  # released with its connection
        assert again
