"""`muse db copy`: a whole Muse database from one engine to the other (or the same).

The source is read in one snapshot (SQLite: one read transaction; PostgreSQL: a REPEATABLE READ,
READ ONLY transaction), table by table, in batches through a server-side cursor, so memory
stays constant. The target is migrated to the same schema, then filled in one transaction:
rows per table are checked against the source's before it commits, and any failure rolls it
all back (a target SQLite file this copy created is removed). A target that holds rows is
refused unless `force` (then its rows are replaced in that same transaction). The export salt
(`meta`) is copied too, so exports of the copy equal the source's.

Every statement is constant text over the table names below (tests/test_security.py); rows
travel as parameters (SQLite) or through COPY (PostgreSQL), by position: both schemas come
from the same migrations, so their columns are in the same order (checked per table).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from storage import pg_sql
from storage.db import connect, connect_readonly, create_file
from storage.errors import StorageError
from storage.location import database_target, describe, scrub
from storage.migrations import MIGRATIONS, migrate, schema_version
from storage.pg_conn import PgConnection
from storage.pg_conn import connect as pg_connect
from storage.pg_opening import prepare

BATCH = 2_000

#: Muse's tables, each before those that refer to it: what a copy copies. A migration that adds
#: a table adds it here (a copy refuses a source with a table it does not know).
TABLES = (
    "meta", "users", "guild_settings", "conversations", "generations", "feedback",
    "feedback_events", "comparisons", "personas", "models", "loops", "loop_events",
    "instances", "slots", "guild_slots", "starts",
)  # fmt: skip
#: The tables with an `id` column, copied in id order (a generation's parent comes first) and
#: whose PostgreSQL identity goes on after the copied ids.
_BY_ID = (
    "conversations", "generations", "feedback_events", "comparisons", "loop_events", "slots",
)  # fmt: skip

#: `?` lists for INSERTs of 1 to 40 columns, as constant text.
_MARKS = (
    "?",
    "?, ?",
    "?, ?, ?",
    "?, ?, ?, ?",
    "?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
)


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
        unknown = sorted(reader.tables - set(TABLES))
        if unknown:
            raise CopyError(f"{describe(source_t)} has tables this Muse does not copy: {unknown}")
        return _fill(reader, target_t, force)


class _Snapshot:
    """The source, read in one snapshot."""

    def __init__(self, conn: Any, version: int, tables: set[str], server_side: bool) -> None:
        self.conn, self.version, self.tables = conn, version, tables
        self._server_side = server_side

    def count_rows(self, query: str) -> int:
        return int(self.conn.execute(query).fetchone()[0])

    @contextmanager
    def rows_of(self, query: str) -> Iterator[Any]:
        """`query`'s rows, fetched in batches (PostgreSQL: a server-side cursor)."""
        if not self._server_side:
            yield self.conn.execute(query)
            return
        with self.conn.cursor(name="muse_copy") as cursor:
            cursor.execute(query)
            yield cursor


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
            yield _Snapshot(conn, version, {n[0] for n in names}, server_side=False)
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
        names = {row[0] for row in found} - {pg_sql.SCHEMA_TABLE}
        version = 0
        if len(names) < len(found):
            version = conn.execute(pg_sql.READ_VERSION).fetchone()[0]
        yield _Snapshot(conn, version, names, server_side=True)
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
        _empty(conn, target, force)
        counts = _copy_rows(reader, conn)
        if isinstance(conn, PgConnection):
            _reset_identities(conn)
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


def _empty(conn: Any, target: Path | str, force: bool) -> None:
    """Refuse a target with rows (the salt in `meta` aside) unless `force`; then empty it
    (every foreign key deletes or unsets, so any order works)."""
    busy = []
    for table in TABLES:
        if table != "meta" and conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]:
            busy.append(table)
    if busy and not force:
        raise CopyError(
            f"{describe(target)} already holds rows ({', '.join(busy)}): pass --force to "
            "replace them"
        )
    for table in TABLES:
        conn.execute(f"DELETE FROM {table}")


def _copy_rows(reader: _Snapshot, conn: Any) -> dict[str, int]:
    """Inside the target's transaction: every table, its count checked against the source's."""
    counts: dict[str, int] = {}
    for table in TABLES:
        select = f"SELECT * FROM {table}"
        if table in _BY_ID:
            select = f"SELECT * FROM {table} ORDER BY id"
        names = _names(conn, table)
        width = len(names)
        for marks in _MARKS:
            if marks.count("?") == width:
                break
        insert = f"INSERT INTO {table} VALUES ({marks})"
        with reader.rows_of(select) as rows:
            if [c[0] for c in rows.description] != names:
                raise CopyError(f"{table}: the source's columns differ from the target's")
            while batch := rows.fetchmany(BATCH):
                _insert(conn, table, insert, batch)
        expected = reader.count_rows(f"SELECT COUNT(*) FROM {table}")
        copied = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        if copied != expected:
            raise CopyError(f"{table}: {copied} rows copied, the source has {expected}")
        counts[table] = int(copied)
    return counts


def _names(conn: Any, table: str) -> list[str]:
    return [c[0] for c in conn.execute(f"SELECT * FROM {table} WHERE 1 = 0").description]


def _insert(conn: Any, table: str, insert: str, rows: list[Any]) -> None:
    """One batch into the target: COPY into PostgreSQL (several times faster than INSERTs)."""
    if not isinstance(conn, PgConnection):
        conn.executemany(insert, rows)
        return
    with conn.raw.cursor() as cursor, cursor.copy(f"COPY {table} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(tuple(row))


def _reset_identities(conn: PgConnection) -> None:
    """PostgreSQL's identity columns go on after the copied ids (SQLite's need no care)."""
    for table in _BY_ID:
        conn.execute(
            f"""SELECT setval(pg_get_serial_sequence(?, 'id'),
                   (SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)""",
            (table,),
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
