"""Read-only states that bind root too (a tmpfs remounted read-only, `chattr +i`), and a database
to try them on: for the read-only store tests and the CLI's (tests/bot/cli/test_cli_errors.py)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storage.store import Store


def make_database(path: Path, *, wal: bool = True) -> None:
    """A migrated database holding a row; left in rollback-journal mode when `wal` is false."""

    async def create() -> None:
        async with Store.open(path) as store:
            await store.record_generation(
                user_id=1,
                task="story",
                messages=[{"role": "user", "content": "a story"}],
                model_id="test-model",
                params={},
            )

    asyncio.run(create())
    if not wal:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA journal_mode = DELETE")


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


def assert_unwritable(path: Path) -> None:
    """The simulation works: this process cannot write `path` (a file or a folder)."""
    with pytest.raises(OSError):
        if path.is_dir():
            (path / "probe").touch()
        else:
            path.open("r+b").close()


@contextlib.contextmanager
def read_only_mount(folder: Path) -> Iterator[Callable[[], None]]:
    """Mount a tmpfs at `folder`; the yielded function remounts it read-only."""
    folder.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(folder))
    try:
        yield lambda: run("mount", "-o", "remount,ro", str(folder))
    finally:
        run("umount", str(folder))


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    run("chattr", "+i", str(path))
    try:
        yield
    finally:
        run("chattr", "-i", str(path))
