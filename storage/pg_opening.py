"""Opening a store on PostgreSQL: the writer thread's connection and the async reader.

The writer's connection is migrated (under a session advisory lock, so two processes starting
at once migrate once) and, for the bot, clears generations left `running`, before any write is
accepted, as on SQLite (`storage.opening`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg

from storage import pg_conn, pg_sql, writes
from storage.db import Clock, format_utc
from storage.errors import ConnectionLost, StorageError
from storage.location import redact
from storage.migrations import Migration, migrate
from storage.pg_conn import PgConnection, PgReader
from storage.writer import Writer

log = logging.getLogger("muse.storage.pg_opening")

#: pg_advisory_lock key of Muse's migrations (any fixed number; "muse" in ASCII).
MIGRATION_LOCK = 0x6D757365


def prepare(conn: PgConnection, migrations: Sequence[Migration]) -> None:
    """Create the version table if missing and run the migrations, one process at a time."""
    conn.execute("SELECT pg_advisory_lock(?)", (MIGRATION_LOCK,))
    try:
        conn.execute(pg_sql.CREATE_VERSION)
        conn.execute(pg_sql.FIRST_VERSION)
        migrate(conn, migrations, path=redact(conn.url))
    finally:
        conn.execute("SELECT pg_advisory_unlock(?)", (MIGRATION_LOCK,))


async def open_postgres(
    url: str,
    clock: Clock,
    mark_interrupted: bool,
    migrations: Sequence[Migration],
    max_batch: int,
) -> tuple[Writer, PgReader, tuple[int, ...]]:
    """The started writer, the reader, and the generations marked `interrupted`."""
    interrupted: list[int] = []

    def opener() -> PgConnection:
        conn = PgConnection(url)
        try:
            prepare(conn, migrations)
            if mark_interrupted:
                conn.execute("BEGIN")
                interrupted.extend(writes.interrupt_running_ids(conn, format_utc(clock())))
                conn.execute("COMMIT")
                if interrupted:
                    log.warning(
                        "%d generations left running by a crash: interrupted", len(interrupted)
                    )
        except BaseException:
            conn.close()
            raise
        return conn

    writer = Writer(
        opener,
        max_batch=max_batch,
        errors=(psycopg.Error, StorageError),
        lost=(ConnectionLost,),
        retry_s=pg_conn.RECONNECT_S,
    )
    await writer.start()
    return writer, PgReader(url), tuple(interrupted)
