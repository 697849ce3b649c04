"""The retention purge happens once per PostgreSQL database: a process whose purge finds the
lock taken (another process is purging) skips the round instead of purging again."""

from __future__ import annotations

import asyncio

import psycopg

from storage.retention import RETENTION_LOCK
from storage.store import Store
from tests.polling import eventually
from tests.postgres_server import PostgresServer
from tests.storage.storage_data import PROMPT


def _someone_waits(url: str) -> bool:
    """A session waits for a lock (the purge, for the row the test locked)."""
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT 1 FROM pg_locks WHERE NOT granted").fetchone() is not None


def _purge_lock_held(url: str) -> bool:
    """Some session holds the retention lock (a bigint key: high and low 32 bits)."""
    with psycopg.connect(url) as conn:
        found = conn.execute(
            """SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
               AND classid = %s AND objid = %s""",
            (RETENTION_LOCK >> 32, RETENTION_LOCK & 0xFFFFFFFF),
        ).fetchone()
    return found is not None


async def test_two_stores_purge_once_the_second_skips_while_the_first_holds_the_lock(
    postgres_server: PostgresServer, clock
) -> None:
    url = postgres_server.create_database()
    async with Store.open(url, clock=clock) as first, Store.open(url, clock=clock) as second:
        old = await first.record_generation(
            user_id=1, task="story", messages=PROMPT, params={}, model_id="smollm2-135m"
        )
        clock.advance(days=40)
        # Another session locks the old row, so the first store's purge stops at its DELETE
        # while it holds the retention lock: a purge in progress in another process.
        blocker = await psycopg.AsyncConnection.connect(url)
        try:
            await blocker.execute("SELECT id FROM generations WHERE id = %s FOR UPDATE", (old,))
            purging = asyncio.create_task(first.purge_older_than(30))
            assert await eventually(lambda: _someone_waits(url), 10, every_s=0.1)
            # Without the lock it would wait for the same row, then purge a second time.
            assert await asyncio.wait_for(second.purge_older_than(30), 10) is None
            assert _purge_lock_held(url)
            assert not purging.done()
            await blocker.commit()
        finally:
            await blocker.close()
        counts = await asyncio.wait_for(purging, 10)
        assert counts is not None and counts["generations"] == 1
        assert await second.get_generation(old) is None
        assert await second.purge_older_than(30) == dict.fromkeys(counts, 0)  # lock released
