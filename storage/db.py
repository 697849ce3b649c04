"""Opening SQLite files as Muse wants them: mode 0600, WAL, synchronous=NORMAL, foreign keys."""

from __future__ import annotations

import ctypes
import errno
import os
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from storage.errors import DatabaseReadOnly

BUSY_TIMEOUT_MS = 30_000

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def format_utc(moment: datetime) -> str:
    """The text form of `*_utc` columns: ISO 8601 in UTC with milliseconds; sorts as text."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def create_file(path: Path) -> None:
    """Create the database file with mode 0600 if it does not exist; an existing file is never
    opened (and keeps its mode).

    Why never opened: closing any descriptor of a file releases every POSIX lock this process
    holds on it, SQLite's included (SQLite's "How To Corrupt An SQLite Database File", 2.2).
    With its locks gone, a store open in this process looks closed to other processes, and the
    next one to close its connection checkpoints and deletes the `-wal` this one still writes
    to. SQLite creates the `-wal` and `-shm` files with the database file's permissions.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    except FileExistsError:
        return
    os.close(fd)  # a new file: no connection of this process can hold a lock on it yet


def check_writable(path: Path) -> None:
    """Raise the `OSError` (EACCES, EPERM, EROFS) that opening the file to write would raise,
    without opening it (see `create_file` for why): the kernel's access(2) check, which honours
    modes, read-only mounts and immutable files as open(2) does."""
    if _access(str(path), os.W_OK) == 0:
        return
    code = ctypes.get_errno()
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        raise OSError(code, os.strerror(code), str(path))


def _libc_access() -> Callable[[str, int], int]:
    """access(2) with its errno kept; where libc cannot be loaded, `os.access` (as EACCES)."""
    try:
        access = ctypes.CDLL(None, use_errno=True).access
    except (OSError, AttributeError):

        def fallback(name: str, mode: int) -> int:
            if os.access(name, mode):
                return 0
            ctypes.set_errno(errno.EACCES)
            return -1

        return fallback
    access.argtypes = (ctypes.c_char_p, ctypes.c_int)
    return lambda name, mode: int(access(os.fsencode(name), mode))


_access = _libc_access()


_UNWRITABLE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_UNWRITABLE_SQLITE = frozenset(
    {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM}
)


def read_only_error(path: Path, exc: BaseException) -> DatabaseReadOnly | None:
    """The `DatabaseReadOnly` that `exc` (raised while opening `path` to write) amounts to.

    None when `exc` is some other failure. SQLite answers "unable to open database file" or
    "attempt to write a readonly database" both when the file is read-only and when the folder
    is, because the `-wal` and `-shm` files beside it cannot be created; `os.access` tells
    which (it honours read-only mounts and immutable files even for root).
    """
    if isinstance(exc, OSError):
        if exc.errno not in _UNWRITABLE_ERRNOS:
            return None
        why = (exc.strerror or os.strerror(exc.errno)).lower()
        if exc.errno == errno.EPERM:
            why += "; is it immutable or append-only? see lsattr"
        failed = Path(exc.filename) if exc.filename else path
        if failed != path:
            return DatabaseReadOnly(str(path), f"{failed}: {why}", exists=False)
        if not path.exists():
            return DatabaseReadOnly(
                str(path), f"its folder {path.parent} is not writable: {why}", exists=False
            )
        return DatabaseReadOnly(str(path), why)
    if isinstance(exc, sqlite3.Error):
        if exc.sqlite_errorcode is None or exc.sqlite_errorcode & 0xFF not in _UNWRITABLE_SQLITE:
            return None
        if not os.access(path, os.W_OK):
            return DatabaseReadOnly(str(path), "the file is not writable")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            return DatabaseReadOnly(
                str(path),
                f"its folder {path.parent} is not writable, so SQLite cannot create "
                f"{path.name}-wal and {path.name}-shm beside it",
            )
        for side in (path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
            if side.exists() and not os.access(side, os.W_OK):
                return DatabaseReadOnly(str(path), f"{side} is not writable")
    return None


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, NORMAL sync, FKs on."""
    conn = sqlite3.connect(path, isolation_level=None, cached_statements=512)
    try:
        configure(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def configure(conn: sqlite3.Connection) -> None:
    """Per-connection settings; WAL itself is persistent in the file once set."""
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
    _enable_wal(conn)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. SQLite answers "locked" at once, without waiting, when two connections
    switch a new file at the same moment, so wait here (up to the busy timeout)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.005)
    if mode.lower() != "wal":
        raise sqlite3.OperationalError(f"could not switch the database to WAL (got {mode!r})")


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection for exports and other long reads; never blocks the writer in WAL."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
    conn.execute("PRAGMA query_only = ON")
    return conn
