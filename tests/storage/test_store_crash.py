"""Durability: kill -9 a writing process; every write it acknowledged must be in the file."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from storage.store import Store

SCRIPT = Path(__file__).with_name("crash_writer.py")
REPO = Path(__file__).resolve().parents[2]


def _write_then_kill(db_path: Path, acknowledged: int) -> list[str]:
    """Start the writer process, let it acknowledge `acknowledged` writes, kill -9 it; return
    every line it printed."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(db_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    lines: list[str] = []
    try:
        assert child.stdout is not None
        while len(lines) < acknowledged:
            line = child.stdout.readline()
            assert line, "the writer process ended early"
            lines.append(line)
        os.kill(child.pid, signal.SIGKILL)
        lines.extend(child.stdout.read().splitlines(keepends=True))  # printed before the kill
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    return lines


async def test_sigkill_mid_load_loses_no_acknowledged_write(db_path: Path) -> None:
    lines = await asyncio.to_thread(_write_then_kill, db_path, 600)  # many writes in flight
    generations = {int(line.split()[1]) for line in lines if line.startswith("g ")}
    votes = {
        (int(line.split()[1]), int(line.split()[2])) for line in lines if line.startswith("f ")
    }
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        stored = {row[0] for row in conn.execute("SELECT id FROM generations")}
        stored_votes = set(conn.execute("SELECT generation_id, user_id FROM feedback"))
    assert generations <= stored
    assert votes <= stored_votes
    async with Store.open(db_path) as store:  # reopening recovers; running ones interrupted
        statuses = {(await store.get_generation(g)).status for g in generations}
    assert statuses == {"interrupted"}
