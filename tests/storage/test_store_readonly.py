"""A database that cannot be written is one clear `DatabaseReadOnly`, and stays untouched.

The tests run as root, for whom `chmod 0444` does not stop a write. So the read-only states are
made the ways that also bind root: a tmpfs the test mounts and remounts read-only, `chattr +i`
(immutable file or folder), and, for the plain chmod cases, a child process that runs as root
without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (`setpriv`), where file modes apply as they
do to the user `muse` runs as. Each setup first checks that it really stops writes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.errors import DatabaseReadOnly, StorageError
from storage.store import Store
from tests.storage.readonly import assert_unwritable, immutable, make_database, read_only_mount

REPO = Path(__file__).resolve().parents[2]
DROP_DAC = "-dac_override,-dac_read_search"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {entry.name: entry.read_bytes() for entry in sorted(folder.iterdir())}


def open_store(path: Path) -> DatabaseReadOnly:
    async def attempt() -> None:
        async with Store.open(path):
            pass

    with pytest.raises(DatabaseReadOnly) as caught:
        asyncio.run(attempt())
    return caught.value


def check_message(error: DatabaseReadOnly, path: Path, *expected: str) -> None:
    message = str(error)
    assert isinstance(error, StorageError)  # `muse export`/`stats` already report these
    assert error.path == str(path)
    assert message.startswith(f"the database {path} ")
    assert "fix its permissions or set MUSE_DB to a writable file." in message
    for part in expected:
        assert part in message
    assert "\n" not in message


@pytest.mark.parametrize("wal", [True, False], ids=["wal", "rollback-journal"])
def test_read_only_file_system(tmp_path: Path, wal: bool) -> None:
    folder = tmp_path / "ro"
    path = folder / "muse.db"
    with read_only_mount(folder) as remount_read_only:
        make_database(path, wal=wal)
        before = snapshot(folder)
        remount_read_only()
        assert_unwritable(path)
        error = open_store(path)
        assert snapshot(folder) == before
    check_message(error, path, "is read-only", "read-only file system")


def test_missing_file_on_read_only_file_system(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    path = folder / "muse.db"
    with read_only_mount(folder) as remount_read_only:
        remount_read_only()
        assert_unwritable(folder)
        error = open_store(path)
        assert not path.exists()
    check_message(error, path, "cannot be created", f"its folder {folder} is not writable")


def test_immutable_file(tmp_path: Path) -> None:
    path = tmp_path / "muse.db"
    make_database(path)
    before = snapshot(tmp_path)
    with immutable(path):
        assert_unwritable(path)
        error = open_store(path)
    assert snapshot(tmp_path) == before
    check_message(error, path, "is read-only", "operation not permitted")


@pytest.mark.parametrize("wal", [True, False], ids=["wal", "rollback-journal"])
def test_immutable_folder(tmp_path: Path, wal: bool) -> None:
    """The file is writable, but the `-wal` and `-shm` files cannot be created beside it."""
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "muse.db"
    make_database(path, wal=wal)
    before = snapshot(folder)
    with immutable(folder):
        assert_unwritable(folder)
        error = open_store(path)
    assert snapshot(folder) == before
    check_message(error, path, "is read-only", f"its folder {folder} is not writable")


CHILD = """
import asyncio, os, sys
from pathlib import Path
from storage.errors import DatabaseReadOnly
from storage.store import Store

path = Path(sys.argv[1])
assert not os.access(sys.argv[2], os.W_OK), "the capabilities were not dropped"

async def attempt():
    async with Store.open(path):
        pass

try:
    asyncio.run(attempt())
except DatabaseReadOnly as exc:
    print(exc)
    sys.exit(3)
"""


def open_without_dac_override(path: Path, unwritable: Path) -> str:
    """Open `path` in a root child that file modes bind; returns its `DatabaseReadOnly`."""
    child = subprocess.run(
        [
            "setpriv",
            f"--inh-caps={DROP_DAC}",
            f"--bounding-set={DROP_DAC}",
            sys.executable,
            "-c",
            CHILD,
            str(path),
            str(unwritable),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 3, child.stdout + child.stderr
    assert child.stderr == ""  # one message, no traceback
    return child.stdout.strip()


def test_chmod_0444_file(tmp_path: Path) -> None:
    path = tmp_path / "muse.db"
    make_database(path)
    path.chmod(0o444)
    before = snapshot(tmp_path)
    message = open_without_dac_override(path, path)
    assert snapshot(tmp_path) == before
    assert message == (
        f"the database {path} is read-only (permission denied): fix its permissions or set "
        "MUSE_DB to a writable file."
    )


def test_chmod_0555_folder(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "muse.db"
    make_database(path)
    before = snapshot(folder)
    folder.chmod(0o555)
    try:
        message = open_without_dac_override(path, folder)
    finally:
        folder.chmod(0o755)
    assert snapshot(folder) == before
    assert f"the database {path} is read-only (its folder {folder} is not writable" in message
    assert message.endswith("set MUSE_DB to a writable file.")
