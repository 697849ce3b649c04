"""`muse db copy`: a whole Muse database from one engine to the other (or the same).

The source is read in one snapshot (SQLite: one read transaction; PostgreSQL: a REPEATABLE READ,
READ ONLY transaction), table by table, in batches through a server-side cursor, so memory
stays constant. The target is migrated to the same schema, then filled in one transaction:
rows per table are checked against the source's before it commits, and any failure rolls it
all back (a target SQLite file this copy created is removed). A target that holds rows is
refused unless `force` (then its rows are replaced in that same transaction). The export salt
(`meta`) is copied too, so exports of the copy equal the source's.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from storage.db import connect, connect_readonly, create_file
from storage.errors import StorageError
from storage.location import database_target, describe, scrub
from storage.migrations import MIGRATIONS, migrate, schema_version
from storage.pg_conn import PgConnection
from storage.pg_conn import connect as pg_connect
from storage.pg_opening import prepare
from storage.pg_sql import SCHEMA_TABLE

BATCH = 2_000
#: Tables whose rows others refer to come first (a generation's parent has a smaller id).
_FIRST = ("meta", "users", "guild_settings", "conversations", "generations")


class CopyError(StorageError):
    """The copy was not made (the target is as it was); the message says why."""


def copy_database(source: str | Path, target: str | Path, *, force: bool = False) -> dict[str, int]:
    """Copy every row of `source` into `target`; returns the rows copied per table."""
    source_t, target_t = database_target(source), database_target(target)
    if str(source_t) == str(target_t):
        raise CopyError("the source and the target are the same database")
    with _snapshot(source_t) as reader:
        if reader.version != len(MIGRATIONS):
            raise CopyError(
                f"{describe(source_t)} has schema version {reader.version}, this Muse writes "
                f"{len(MIGRATIONS)}: open it once with this Muse (e.g. `muse doctor`) first"
            )
        return _fill(reader, target_t, force)


class _Snapshot:
    """The source, read in one snapshot: its tables, columns, counts and rows."""

    def __init__(self, conn: Any, version: int, tables: list[str], batches: Callable[..., Any]):
        self.conn, self.version, self.tables = conn, version, tables
        self._batches = batches

    def count(self, table: str) -> int:
        return int(self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def columns(self, table: str) -> list[str]:
        cursor = self.conn.execute(f"SELECT * FROM {table} WHERE 1 = 0")
        return [column[0] for column in cursor.description]

    def rows(self, table: str, columns: list[str]) -> Iterator[list[tuple[Any, ...]]]:
        return self._batches(table, columns)


def _ordered(tables: list[str]) -> list[str]:
    first = [name for name in _FIRST if name in tables]
    return first + sorted(set(tables) - set(first))


def _order_by(columns: list[str]) -> str:
    return " ORDER BY id" if "id" in columns else ""


@contextmanager
def _snapshot(source: Path | str) -> Iterator[_Snapshot]:
    if isinstance(source, Path):
        if not source.is_file():
            raise CopyError(f"there is no database at {source}")
        conn = connect_readonly(source)
        try:
            conn.execute("BEGIN")
            version = schema_version(conn)
            names = conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            ).fetchall()

            def batches(table: str, columns: list[str]) -> Iterator[list[tuple[Any, ...]]]:
                cursor = conn.execute(
                    f"SELECT {', '.join(columns)} FROM {table}{_order_by(columns)}"
                )
                while rows := cursor.fetchmany(BATCH):
                    yield rows

            yield _Snapshot(conn, version, _ordered([n[0] for n in names]), batches)
        finally:
            conn.close()
        return
    try:
        conn = pg_connect(source)
    except StorageError as exc:
        raise CopyError(str(exc)) from None
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        found = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
        names = [row[0] for row in found if row[0] != SCHEMA_TABLE]
        version = 0
        if SCHEMA_TABLE in [row[0] for row in found]:
            version = conn.execute(f"SELECT version FROM {SCHEMA_TABLE}").fetchone()[0]

        def pg_batches(table: str, columns: list[str]) -> Iterator[list[tuple[Any, ...]]]:
            with conn.cursor(name=f"muse_copy_{table}") as cursor:  # server-side
                cursor.execute(f"SELECT {', '.join(columns)} FROM {table}{_order_by(columns)}")
                while rows := cursor.fetchmany(BATCH):
                    yield [tuple(row) for row in rows]

        yield _Snapshot(conn, version, _ordered(names), pg_batches)
    except psycopg.Error as exc:
        raise CopyError(scrub(str(exc), source)) from None
    finally:
        conn.close()


def _fill(reader: _Snapshot, target: Path | str, force: bool) -> dict[str, int]:
    created = isinstance(target, Path) and not target.exists()
    try:
        conn = _open_target(target)
    except (OSError, sqlite3.Error, psycopg.Error, StorageError) as exc:
        _remove_if(created, target)
        raise CopyError(f"cannot open {describe(target)}: {scrub(str(exc), str(target))}") from None
    try:
        conn.execute("BEGIN IMMEDIATE")
        counts = _copy_rows(reader, conn, target, force)
        conn.execute("COMMIT")
        return counts
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()
        conn = None
        _remove_if(created, target)
        if isinstance(exc, CopyError):
            raise
        if isinstance(exc, (sqlite3.Error, psycopg.Error, StorageError)):
            raise CopyError(f"copying failed: {scrub(str(exc), str(target))}") from None
        raise
    finally:
        if conn is not None:
            conn.close()


def _open_target(target: Path | str) -> Any:
    if isinstance(target, str):
        pg = PgConnection(target)
        prepare(pg, MIGRATIONS)
        return pg
    create_file(target)
    conn = connect(target)
    migrate(conn, MIGRATIONS, path=str(target))
    return conn


def _remove_if(created: bool, target: Path | str) -> None:
    if created and isinstance(target, Path):
        for name in (target, Path(f"{target}-wal"), Path(f"{target}-shm")):
            with contextlib.suppress(FileNotFoundError):
                name.unlink()


def _copy_rows(reader: _Snapshot, conn: Any, target: Path | str, force: bool) -> dict[str, int]:
    """Inside the target's transaction: empty it (with `force`), copy, check the counts."""
    held = {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in reader.tables}
    busy = sorted(t for t, n in held.items() if n and t != "meta")
    if busy and not force:
        raise CopyError(
            f"{describe(target)} already holds rows ({', '.join(busy)}): pass --force to "
            "replace them"
        )
    for table in reversed(reader.tables):
        conn.execute(f"DELETE FROM {table}")
    counts: dict[str, int] = {}
    for table in reader.tables:
        columns = reader.columns(table)
        insert = (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
        )
        for rows in reader.rows(table, columns):
            _insert(conn, table, columns, insert, rows)
        expected = reader.count(table)
        copied = int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        if copied != expected:
            raise CopyError(f"{table}: {copied} rows copied, the source has {expected}")
        counts[table] = copied
    if isinstance(target, str):
        _reset_identities(conn, [t for t in reader.tables if "id" in reader.columns(t)])
    return counts


def _insert(conn: Any, table: str, columns: list[str], insert: str, rows: list[Any]) -> None:
    """One batch into the target: COPY into PostgreSQL (several times faster than INSERTs)."""
    if not isinstance(conn, PgConnection):
        conn.executemany(insert, rows)
        return
    with (
        conn.raw.cursor() as cursor,
        cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)


def _reset_identities(conn: PgConnection, tables: list[str]) -> None:
    """PostgreSQL's identity columns go on after the copied ids (SQLite's need no care)."""
    for table in tables:
        sequence = conn.execute("SELECT pg_get_serial_sequence(?, 'id')", (table,)).fetchone()
        if sequence is not None and sequence[0] is not None:
            conn.execute(
                f"SELECT setval(?, (SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)",
                (sequence[0],),
            )


@contextmanager
def sqlite_snapshot(url: str) -> Iterator[Path]:
    """A PostgreSQL database's snapshot as a temporary SQLite file (mode 0600), removed after:
    how the exports read PostgreSQL (their SQL is SQLite's, see `storage.export`)."""
    folder = Path(tempfile.mkdtemp(prefix="muse-snapshot-"))
    path = folder / "snapshot.db"
    try:
        copy_database(url, path)
        yield path
    finally:
        for name in folder.iterdir():
            name.unlink()
        os.rmdir(folder)
