"""Opening a store's two connections: the writer thread's and the aiosqlite reader's.

The writer's connection is made (mode 0600), migrated and, for the bot, cleared of generations
a crash left `running` before any write is accepted; a file that cannot be written is one
`DatabaseReadOnly`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Generator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiosqlite

from storage import writes
from storage.db import Clock, connect, create_file, format_utc, read_only_error
from storage.migrations import Migration, migrate
from storage.writer import Writer

log = logging.getLogger("muse.storage.opening")

T = TypeVar("T")


async def open_connections(
    path: Path,
    clock: Clock,
    mark_interrupted: bool,
    migrations: Sequence[Migration],
    max_batch: int,
) -> tuple[Writer, aiosqlite.Connection, tuple[int, ...]]:
    """The started writer, the read connection, and the generations marked `interrupted`."""
    interrupted: list[int] = []

    def opener() -> sqlite3.Connection:
        try:
            return open_for_writing()
        except (OSError, sqlite3.Error) as exc:
            read_only = read_only_error(path, exc)
            if read_only is None:
                raise
            raise read_only from exc

    def open_for_writing() -> sqlite3.Connection:
        create_file(path)
        conn = connect(path)
        try:
            conn.execute("PRAGMA secure_delete = ON")  # forgotten data is overwritten
            migrate(conn, migrations, path=str(path))
            if mark_interrupted:
                conn.execute("BEGIN IMMEDIATE")
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

    writer = Writer(opener, max_batch=max_batch)
    await writer.start()
    try:
        reader = await aiosqlite.connect(path, isolation_level=None)
    except BaseException:
        await writer.close()
        raise
    reader.row_factory = sqlite3.Row
    await reader.execute("PRAGMA query_only = ON")
    await reader.execute("PRAGMA busy_timeout = 30000")
    return writer, reader, tuple(interrupted)


class Opening(Generic[T]):
    """What `Store.open` returns: awaitable, or usable as `async with` (closing at the end)."""

    def __init__(self, opening: Awaitable[T]) -> None:
        self._opening = opening
        self._opened: Any = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._opening.__await__()

    async def __aenter__(self) -> T:
        self._opened = await self._opening
        return self._opened

    async def __aexit__(self, *exc_info: object) -> None:
        if self._opened is not None:
            await self._opened.close()
