"""PostgreSQL connections shaped like the SQLite ones the store's operations take.

`PgConnection` (sync, for the writer thread) answers what the write operations and the writer
use of `sqlite3.Connection`: `execute`, `executemany`, `in_transaction`, `row_factory`, `close`.
`PgReader` (async) answers what the reads use of `aiosqlite.Connection`: `execute` (awaitable or
`async with`), `execute_fetchall`, `close`. Both translate each SQLite text once
(`pg_sql.translate`), bind parameters client-side (SQLite's `:x IS NULL` needs no types), give
rows that index by position and by name like `sqlite3.Row`, and read `SUM`'s numeric as int.

A lost connection (a server restart) is opened again: the writer's at its next transaction,
retrying within `RECONNECT_S`; the reader's at once, its query run again (reads are idempotent).
Errors are raised with the password scrubbed from their text.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.adapt import Loader
from psycopg.pq import TransactionStatus

from storage.errors import ConnectionLost, DatabaseUnreachable
from storage.pg_sql import translate

#: How long a lost connection is retried before the operation fails (then: "not saved").
RECONNECT_S = 30.0
CONNECT_TIMEOUT_S = 5

Params = Sequence[Any] | Mapping[str, Any]


class PgRow(tuple):  # type: ignore[type-arg]
    """A result row: by position (a tuple) and by column name, and `dict(row)`, as sqlite3.Row."""

    _names: tuple[str, ...] = ()

    def keys(self) -> tuple[str, ...]:
        return self._names

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)


@functools.lru_cache(maxsize=256)
def _row_type(names: tuple[str, ...]) -> type[PgRow]:
    return type("Row", (PgRow,), {"_names": names, "__slots__": ()})


def _row_factory(cursor: Any) -> Any:
    return _row_type(tuple(column.name for column in cursor.description or ()))


class _NumericLoader(Loader):
    """`SUM` over integers is numeric in PostgreSQL and an integer in SQLite: int when whole."""

    def load(self, data: Any) -> int | float:
        value = Decimal(bytes(data).decode())
        return int(value) if value == value.to_integral_value() else float(value)


def _configure(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    conn.adapters.register_loader("numeric", _NumericLoader)
    conn.row_factory = _row_factory


def connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection (transactions are explicit, as in SQLite's)."""
    try:
        conn = psycopg.connect(
            url, autocommit=True, cursor_factory=psycopg.ClientCursor,
            connect_timeout=CONNECT_TIMEOUT_S, application_name="muse",
        )  # fmt: skip
    except psycopg.Error as exc:
        raise DatabaseUnreachable(url, str(exc)) from None
    _configure(conn)
    return conn


def _args(params: Params | None) -> Params:
    return () if params is None else params


class PgCursor:
    """The part of `sqlite3.Cursor` the operations use."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor
        self.rowcount = cursor.rowcount
        self.lastrowid = None  # PostgreSQL has none: operations use RETURNING id
        self.description = cursor.description

    def fetchone(self) -> Any:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall() if self._cursor.description else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cursor) if self._cursor.description else iter(())


_DEFERRABLE = re.compile(r"^(SAVEPOINT|RELEASE) \w+$")


class _NoRows:
    """The result of a statement that returns nothing (a deferred SAVEPOINT or RELEASE)."""

    rowcount = -1
    lastrowid = None

    def fetchone(self) -> None:
        return None

    def fetchall(self) -> list[Any]:
        return []

    def __iter__(self) -> Iterator[Any]:
        return iter(())


_NO_ROWS = _NoRows()


class PgConnection:
    """The writer thread's connection (see the module's docstring)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.row_factory: Any = None  # rows always index both ways; kept for the operations
        self._conn = connect(url)
        #: SAVEPOINT and RELEASE statements not sent yet: they go with the next statement, in
        #: one round trip (the writer runs one of each around every operation).
        self._deferred: list[str] = []

    @property
    def in_transaction(self) -> bool:
        status = self._conn.info.transaction_status
        return status in (TransactionStatus.INTRANS, TransactionStatus.INERROR)

    @property
    def raw(self) -> psycopg.Connection[Any]:
        """The psycopg connection (server-side cursors, COPY)."""
        return self._conn

    def execute(self, sql: str, params: Params | None = None) -> PgCursor:
        text = translate(sql)
        if text == "BEGIN":
            self._deferred.clear()
            return self._begin()
        if _DEFERRABLE.match(text):
            self._deferred.append(text)
            return _NO_ROWS
        if text == "ROLLBACK":  # it ends the savepoints too; a RELEASE would fail first
            self._deferred.clear()
        deferred, self._deferred = self._deferred, []
        try:
            cursor = self._conn.execute("; ".join([*deferred, text]), _args(params))
            for _ in deferred:  # to the result of `text`
                cursor.nextset()
            return PgCursor(cursor)
        except psycopg.OperationalError as exc:
            if self._conn.broken or self._conn.closed:
                raise ConnectionLost(self.url, str(exc)) from None
            raise

    def executemany(self, sql: str, rows: Sequence[Params]) -> PgCursor:
        if self._deferred:
            self._conn.execute("; ".join(self._deferred), ())
            self._deferred.clear()
        with self._conn.cursor() as cursor:
            cursor.executemany(translate(sql), rows)
            return PgCursor(cursor)

    def _begin(self) -> PgCursor:
        """BEGIN; a connection the server dropped (a restart: psycopg learns of it only now)
        is opened again, retrying for `RECONNECT_S`."""
        deadline = time.monotonic() + RECONNECT_S
        while True:
            try:
                if self._conn.closed or self._conn.broken:
                    self._conn = connect(self.url)
                return PgCursor(self._conn.execute("BEGIN"))
            except (psycopg.OperationalError, DatabaseUnreachable) as exc:
                if time.monotonic() > deadline:
                    raise ConnectionLost(self.url, str(exc)) from None
                time.sleep(0.2)

    def close(self) -> None:
        self._conn.close()


class _Result:
    """Rows fetched by `PgReader.execute`, used as aiosqlite's cursor is."""

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    async def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    async def fetchall(self) -> list[Any]:
        return self._rows

    def __aiter__(self) -> _Result:
        self._iter = iter(self._rows)
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._iter)
        except StopIteration:
            raise StopAsyncIteration from None


class _Execution:
    """`await reader.execute(...)` or `async with reader.execute(...) as cursor`."""

    def __init__(self, reader: PgReader, sql: str, params: Params | None) -> None:
        self._reader, self._sql, self._params = reader, sql, params

    def __await__(self) -> Generator[Any, None, _Result]:
        return self._run().__await__()

    async def _run(self) -> _Result:
        return _Result(await self._reader.execute_fetchall(self._sql, self._params))

    async def __aenter__(self) -> _Result:
        return await self._run()

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class PgReader:
    """The store's read connection on PostgreSQL (autocommit: each read its own snapshot)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, cursor_factory=psycopg.AsyncClientCursor,
                    connect_timeout=CONNECT_TIMEOUT_S, application_name="muse-reader",
                )  # fmt: skip
            except psycopg.Error as exc:
                raise DatabaseUnreachable(self.url, str(exc)) from None
            _configure(self._conn)
        return self._conn

    def execute(self, sql: str, params: Params | None = None) -> _Execution:
        return _Execution(self, sql, params)

    async def execute_fetchall(self, sql: str, params: Params | None = None) -> list[Any]:
        text = translate(sql)
        deadline = time.monotonic() + RECONNECT_S
        async with self._lock:
            while True:
                try:
                    conn = await self._connection()
                    cursor = await conn.execute(text, _args(params))
                    return await cursor.fetchall() if cursor.description else []
                except DatabaseUnreachable:
                    if time.monotonic() > deadline:
                        raise
                except psycopg.OperationalError as exc:
                    lost = self._conn is not None and self._conn.broken
                    if not lost or time.monotonic() > deadline:
                        raise DatabaseUnreachable(self.url, str(exc)) from None
                await asyncio.sleep(0.2)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


def try_transaction_lock(conn: Any, key: int) -> bool:
    """In a write operation: take PostgreSQL's advisory lock `key` until the writer's
    transaction ends, or False when another session holds it (nothing waits). On SQLite
    always True: the write transaction holds the file's only write lock already."""
    if not isinstance(conn, PgConnection):
        return True
    return bool(conn.execute("SELECT pg_try_advisory_xact_lock(?)", (key,)).fetchone()[0])


@contextlib.contextmanager
def try_advisory_lock(url: str, key: int) -> Iterator[bool]:
    """Hold PostgreSQL's session advisory lock `key` on its own connection for the block;
    yields False (holding nothing) when another session holds it. What must happen once per
    database (a tune) takes one: it holds across processes and machines."""
    conn = connect(url)
    try:
        held = bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])
        yield held
    finally:
        conn.close()  # ends the session, and so its locks
