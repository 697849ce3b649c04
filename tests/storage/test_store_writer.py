"""The single writer: group commit, isolation of failing operations, concurrency, durability."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from storage.errors import StoreClosed
from storage.store import Store
from storage.writer import Writer


async def test_fifty_concurrent_writers_never_see_a_lock(store: Store, db_path, make_generation):
    generations = [await make_generation(user_id=9) for _ in range(5)]

    async def rater(user_id: int) -> int:
        for n in range(40):
            await store.record_feedback(
                generations[n % 5], user_id, thumbs="up" if n % 2 else "down"
            )
        return user_id

    raters = await asyncio.gather(*(rater(1000 + i) for i in range(50)))
    assert len(raters) == 50
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 50 * 5
        assert conn.execute("SELECT COUNT(*) FROM feedback_events").fetchone()[0] == 50 * 40
    assert store._writer.groups < store._writer.operations  # writes really were grouped


async def test_reads_run_while_writes_commit(store: Store, make_generation):
    generation_id = await make_generation()

    async def writes() -> None:
        for user_id in range(200):
            await store.record_feedback(generation_id, user_id, stars=5)

    async def reads() -> int:
        seen = 0
        for _ in range(50):
            seen += (await store.get_generation(generation_id)) is not None
            await asyncio.sleep(0)
        return seen

    _, seen = await asyncio.gather(writes(), reads())
    assert seen == 50


async def test_a_long_reader_does_not_block_the_writer(store: Store, db_path, make_generation):
    generation_id = await make_generation()
    reader = sqlite3.connect(db_path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        before = reader.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
        outcome = await asyncio.wait_for(store.record_feedback(generation_id, 2, thumbs="up"), 5)
        assert outcome.score == 1
        # The reader keeps its snapshot; a new one sees the committed write.
        assert reader.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == before
        reader.execute("COMMIT")
        assert reader.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == before + 1
    finally:
        reader.close()


def _insert(conn: sqlite3.Connection, value: int) -> int:
    conn.execute("INSERT INTO t (x) VALUES (?)", (value,))
    if value < 0:
        raise ValueError(f"refused {value}")
    return value


async def _writer(tmp_path: Path, **options) -> Writer:
    def opener() -> sqlite3.Connection:
        conn = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
        return conn

    writer = Writer(opener, **options)
    await writer.start()
    return writer


async def _one_group(writer: Writer, *ops: tuple) -> list[object]:
    """Run `ops` as one group: hold the writer busy while they queue up behind it."""
    entered, gate = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(5)

    busy = writer.submit(hold)
    await asyncio.to_thread(entered.wait, 5)  # the writer thread is inside `hold` now
    futures = [writer.submit(fn, *args) for fn, *args in ops]
    gate.set()
    await busy
    groups = writer.groups
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert writer.groups == groups + 1
    return results


async def test_only_the_failing_operation_of_a_group_fails(tmp_path: Path) -> None:
    writer = await _writer(tmp_path)
    try:
        results = await _one_group(writer, *((_insert, v) for v in (1, 2, -3, 4, -5, 6)))
    finally:
        await writer.close()
    assert results[:2] == [1, 2] and results[3] == 4 and results[5] == 6
    assert isinstance(results[2], ValueError) and "-3" in str(results[2])
    assert isinstance(results[4], ValueError)
    with sqlite3.connect(tmp_path / "w.db") as conn:
        assert sorted(r[0] for r in conn.execute("SELECT x FROM t")) == [1, 2, 4, 6]


def _abort(conn: sqlite3.Connection) -> None:
    """What SQLite does on SQLITE_FULL or an I/O error: the whole transaction is gone."""
    conn.execute("INSERT INTO t (x) VALUES (100)")
    conn.execute("ROLLBACK")
    raise sqlite3.OperationalError("database or disk is full")


async def test_an_aborted_transaction_fails_every_write_in_it(tmp_path: Path) -> None:
    writer = await _writer(tmp_path)
    try:
        results = await _one_group(writer, (_insert, 1), (_abort,), (_insert, 2))
    finally:
        await writer.close()
    # The first write was rolled back with the transaction: its caller must not hear "done".
    assert isinstance(results[0], sqlite3.OperationalError)
    assert isinstance(results[1], sqlite3.OperationalError)
    assert results[2] == 2  # the rest of the group ran in a new transaction
    with sqlite3.connect(tmp_path / "w.db") as conn:
        assert [r[0] for r in conn.execute("SELECT x FROM t")] == [2]


async def test_one_commit_per_write_when_max_batch_is_one(tmp_path: Path) -> None:
    writer = await _writer(tmp_path, max_batch=1)
    try:
        assert await asyncio.gather(*(writer.submit(_insert, n) for n in range(10))) == list(
            range(10)
        )
    finally:
        await writer.close()
    assert writer.groups == 10


async def test_a_write_is_visible_to_other_connections_when_it_returns(
    store: Store, db_path, make_generation
):
    generation_id = await make_generation(status="running")
    with sqlite3.connect(db_path) as conn:
        status = conn.execute("SELECT status FROM generations WHERE id = ?", (generation_id,))
        assert status.fetchone()[0] == "running"


async def test_close_commits_what_is_queued_then_refuses(db_path: Path) -> None:
    store = await Store.open(db_path)
    pending = [asyncio.ensure_future(store.set_opted_out(n, True)) for n in range(20)]
    await asyncio.sleep(0)  # let the tasks queue their writes
    await store.close()
    await asyncio.gather(*pending)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 20
    with pytest.raises(StoreClosed):
        await store.set_opted_out(99, True)
