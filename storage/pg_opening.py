"""Opening a store on PostgreSQL: the writer thread's connection and the async reader.

The writer's connection is migrated (under a session advisory lock, so two processes starting
at once migrate once) before any write is accepted, as on SQLite (`storage.opening`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg

from storage import pg_conn, pg_sql
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
    url: str, migrations: Sequence[Migration], max_batch: int
) -> tuple[Writer, PgReader]:
    """The started writer and the reader (the store then joins as an instance: `storage.owners`)."""

    def opener() -> PgConnection:
        conn = PgConnection(url)
        try:
            prepare(conn, migrations)
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
    return writer, PgReader(url)
