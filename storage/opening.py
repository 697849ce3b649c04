"""Opening a store's two connections: the writer thread's and the aiosqlite reader's.

The writer's connection is made (mode 0600) and migrated before any write is accepted (the
store then joins as an instance: `storage.owners`); a file that cannot be written is one
`DatabaseReadOnly`. A process opens one store per database (`claim`): a second open of the same
file is refused with `DatabaseAlreadyOpen` (see there for why).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Awaitable, Generator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiosqlite

from storage.db import check_writable, connect, create_file, read_only_error
from storage.errors import DatabaseAlreadyOpen
from storage.migrations import Migration, migrate
from storage.writer import Writer

T = TypeVar("T")


class OpenFiles:
    """The database files this process has a store open on, by path and by file identity
    (device, inode), so that a symlink or a second name of the same file is caught too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: set[str] = set()
        self._inodes: dict[tuple[int, int], str] = {}

    def claim(self, path: Path) -> Claim:
        """Create the file if missing and claim it for one store; raises `DatabaseAlreadyOpen`
        (or `DatabaseReadOnly` when it cannot be created). Blocking: call it off the loop."""
        name = os.path.realpath(path)
        with self._lock:
            if name in self._paths:
                raise DatabaseAlreadyOpen(str(path))
            self._paths.add(name)
        try:
            _create(path)
            info = os.stat(name)
        except BaseException:
            with self._lock:
                self._paths.discard(name)
            raise
        inode = (info.st_dev, info.st_ino)
        with self._lock:
            if inode in self._inodes:
                self._paths.discard(name)
                raise DatabaseAlreadyOpen(str(path))
            self._inodes[inode] = name
        return Claim(self, name, inode)

    def release(self, claim: Claim) -> None:
        with self._lock:
            self._paths.discard(claim.name)
            self._inodes.pop(claim.inode, None)


class Claim:
    """One store's hold on its file; `release()` when the store is closed (idempotent)."""

    def __init__(self, owner: OpenFiles, name: str, inode: tuple[int, int]) -> None:
        self._owner = owner
        self.name = name
        self.inode = inode
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._owner.release(self)


#: This process's open databases: process-wide by nature, as the POSIX locks it protects.
OPEN_FILES = OpenFiles()


def _create(path: Path) -> None:
    """`create_file`, with a file that cannot be created or written reported as
    `DatabaseReadOnly` before SQLite makes `-wal`/`-shm` files beside a file it cannot write."""
    try:
        create_file(path)
        check_writable(path)
    except OSError as exc:
        read_only = read_only_error(path, exc)
        if read_only is None:
            raise
        raise read_only from exc


async def open_connections(
    path: Path, migrations: Sequence[Migration], max_batch: int
) -> tuple[Writer, aiosqlite.Connection, Claim]:
    """The started writer, the read connection, and the claim on the file (release it after
    closing both connections)."""
    claim = await asyncio.to_thread(OPEN_FILES.claim, path)
    try:
        return (*await _open_connections(path, migrations, max_batch), claim)
    except BaseException:
        claim.release()
        raise


async def _open_connections(
    path: Path, migrations: Sequence[Migration], max_batch: int
) -> tuple[Writer, aiosqlite.Connection]:
    def opener() -> sqlite3.Connection:
        try:
            return open_for_writing()
        except (OSError, sqlite3.Error) as exc:
            read_only = read_only_error(path, exc)
            if read_only is None:
                raise
            raise read_only from exc

    def open_for_writing() -> sqlite3.Connection:
        conn = connect(path)
        try:
            conn.execute("PRAGMA secure_delete = ON")  # forgotten data is overwritten
            migrate(conn, migrations, path=str(path))
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
    return writer, reader


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
