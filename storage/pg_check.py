"""What `muse doctor` reports of a PostgreSQL database: reachable, server version, schema.

It only reads (the schema version row); the URL is shown redacted and every message scrubbed.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from storage import pg_sql
from storage.errors import StorageError
from storage.location import redact, scrub
from storage.migrations import MIGRATIONS
from storage.pg_conn import connect


@dataclass(frozen=True, slots=True)
class ServerCheck:
    """`problem` empty means healthy; `version` 0 with no problem: not created yet."""

    url: str  # redacted
    server: str = ""
    version: int = 0
    supported: int = len(MIGRATIONS)
    problem: str = ""


def check_server(url: str) -> ServerCheck:
    shown = redact(url)
    try:
        conn = connect(url)
    except StorageError as exc:
        return ServerCheck(shown, problem=str(exc))
    try:
        server = conn.execute("SHOW server_version").fetchone()[0]
        table = conn.execute("SELECT to_regclass(%s)", (pg_sql.SCHEMA_TABLE,)).fetchone()[0]
        version = 0
        if table is not None:
            version = conn.execute(pg_sql.READ_VERSION).fetchone()[0]
    except psycopg.Error as exc:
        return ServerCheck(shown, problem=scrub(str(exc), url))
    finally:
        conn.close()
    problem = ""
    if version > len(MIGRATIONS):
        problem = (
            f"schema version {version} is newer than this Muse knows ({len(MIGRATIONS)}): "
            "upgrade Muse"
        )
    return ServerCheck(shown, server.split()[0], version, len(MIGRATIONS), problem)
