"""A process left writing to a deleted `-wal`: the state that lost acknowledged writes, made on
purpose so that `muse doctor` and `storage.maintenance` can be shown to find it."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

HOLD = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("INSERT INTO t VALUES (1)")
print("holding", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def holding_a_deleted_wal(path: Path) -> Iterator[int]:
    """A WAL database at `path` (created if missing) and a process writing to it whose `-wal`
    is then deleted, as another process's last close did; yields that process's id."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"holding"
        os.unlink(f"{path}-wal")
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
