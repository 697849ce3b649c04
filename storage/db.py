"""Opening SQLite files as Muse wants them: mode 0600, WAL, synchronous=NORMAL, foreign keys."""

from __future__ import annotations

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
    """Create the database file with mode 0600 if missing (an existing one keeps its mode).

    SQLite creates the `-wal` and `-shm` files with the same permissions as the database file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


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
