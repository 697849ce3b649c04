"""Backing up and checking the database file while the bot may be running.

`backup_file` uses SQLite's online backup API in one step: the copy is one read transaction's
snapshot (WAL lets the bot keep committing meanwhile), written to a temporary file of mode 0600
beside the target and moved into place only once complete. `check_file` opens the file read-only
and reports what `muse doctor` prints, including a process that writes to a deleted `-wal`
(`deleted_wal_holders`); neither ever writes to the source.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from storage.copy import CopyError, copy_database
from storage.db import connect_readonly
from storage.errors import StorageError
from storage.migrations import MIGRATIONS, schema_version


class BackupError(StorageError):
    """The backup was not made; the message says why."""


def backup_file(source: Path | str, target: Path, *, overwrite: bool = False) -> int:
    """Copy the database `source` to `target` consistently; returns the copy's size in bytes.

    A PostgreSQL `source` (a URL) is copied into an SQLite file (`copy.copy_database`: one
    snapshot); restoring it is `muse db copy` back. Refuses an existing `target` unless
    `overwrite`, a missing `source`, and a missing folder.
    """
    target = Path(target)
    if isinstance(source, str):
        return _write_beside(target, overwrite, lambda partial: _copy_postgres(source, partial))
    source = Path(source)
    if not source.is_file():
        raise BackupError(f"there is no database at {source} (check MUSE_DB or --db)")
    if target.resolve() == source.resolve():
        raise BackupError(f"{target} is the database itself; choose another path")
    return _write_beside(target, overwrite, lambda partial: _copy(source, partial))


def _write_beside(target: Path, overwrite: bool, copy: Callable[[Path], None]) -> int:
    """Run `copy` into a temporary file of mode 0600 beside `target`, then move it there."""
    if target.is_dir():
        raise BackupError(f"{target} is a folder; give the backup file's path")
    if target.exists() and not overwrite:
        raise BackupError(f"{target} already exists; pass --force to overwrite it")
    if not target.parent.is_dir():
        raise BackupError(f"no such directory: {target.parent}")
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise BackupError(f"cannot write to {target.parent}: {exc.strerror}") from exc
    try:
        copy(partial)
        if overwrite:
            os.replace(partial, target)
        else:
            _move_unless_exists(partial, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return target.stat().st_size


def _move_unless_exists(partial: Path, target: Path) -> None:
    """Rename without replacing: a hard link fails if the target appeared meanwhile."""
    try:
        os.link(partial, target)
    except FileExistsError:
        raise BackupError(f"{target} already exists; pass --force to overwrite it") from None
    except OSError:  # a file system without hard links: check, then rename
        if target.exists():
            raise BackupError(f"{target} already exists; pass --force to overwrite it") from None
        os.replace(partial, target)
        return
    os.unlink(partial)


def _copy_postgres(url: str, partial: Path) -> None:
    try:
        copy_database(url, partial, force=True)
    except CopyError as exc:
        raise BackupError(str(exc)) from None


def _copy(source: Path, partial: Path) -> None:
    try:
        src = connect_readonly(source)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {source}: {exc}") from exc
    try:
        dst = sqlite3.connect(partial, isolation_level=None)
        try:
            src.backup(dst)  # pages=-1: the whole file from one snapshot
            result = dst.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"backing up {source} failed: {exc}") from exc
    finally:
        src.close()
    if result != "ok":
        raise BackupError(f"the copy of {source} failed its check: {result}")


@dataclass(frozen=True, slots=True)
class FileCheck:
    """What `check_file` found; `problems` empty means healthy."""

    path: Path
    exists: bool
    mode: int = 0
    version: int = 0
    supported: int = len(MIGRATIONS)
    integrity: str = ""
    problems: tuple[str, ...] = ()
    #: (pid, fd) of processes writing to this database's `-wal` after it was deleted
    deleted_wal: tuple[tuple[int, int], ...] = ()


def check_file(path: Path) -> FileCheck:
    """Open `path` read-only: its mode, schema version and `PRAGMA integrity_check`."""
    path = Path(path)
    if not path.exists():
        return FileCheck(path, exists=False)
    problems: list[str] = []
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        problems.append(f"mode {mode:04o}: others may read it")
    version, integrity = 0, ""
    holders = deleted_wal_holders(path)
    for pid, fd in holders:
        problems.append(
            f"process {pid} writes to a deleted {path.name}-wal: what it saved since then is "
            f"not in the file (a copy of it: /proc/{pid}/fd/{fd})"
        )
    try:
        conn = connect_readonly(path)
        try:
            version = schema_version(conn)
            rows = conn.execute("PRAGMA integrity_check").fetchall()
            integrity = "; ".join(str(r[0]) for r in rows[:5])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        problems.append(f"cannot be read as SQLite: {exc}")
    else:
        if integrity != "ok":
            problems.append(f"integrity_check: {integrity} (restore a backup)")
        if version > len(MIGRATIONS):
            problems.append(
                f"schema version {version} is newer than this Muse knows "
                f"({len(MIGRATIONS)}): upgrade Muse"
            )
    return FileCheck(
        path, True, mode, version, len(MIGRATIONS), integrity, tuple(problems), holders
    )


def deleted_wal_holders(path: Path, proc: Path = Path("/proc")) -> tuple[tuple[int, int], ...]:
    """(pid, fd) of every process (that this user may inspect) holding the database's `-wal`
    open after it was deleted: such a process writes where no other process, nor its own
    next start, will read. Linux only (`/proc/<pid>/fd`); elsewhere nothing is found."""
    deleted = f"{os.path.realpath(path)}-wal (deleted)"
    found: list[tuple[int, int]] = []
    if not proc.is_dir():
        return ()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == deleted:
                    found.append((int(entry.name), int(fd.name)))
            except OSError:
                continue
    return tuple(sorted(found))
