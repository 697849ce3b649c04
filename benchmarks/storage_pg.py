"""The PostgreSQL half of `benchmarks/storage.py`: committed writes/s from one and from four
processes (each 50 writers through its own Store, group commit), and the export's peak memory.

The server: `--postgres URL` (a database this benchmark may fill), else a temporary one, as the
test suite starts it (benchmarks/postgres_server.py: Debian's binaries, loopback, fsync on as
a real server).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from storage.copy import copy_database  # noqa: E402
from storage.store import Store  # noqa: E402

_CHILD = """
import asyncio, json, sys, time
sys.path.insert(0, {repo!r})
from benchmarks.storage import _drive
from storage.store import Store

async def main():
    async with Store.open({url!r}, mark_interrupted=False) as store:
        offset = {index} * 1_000_000
        async def write(generation_id, user_id, thumbs):
            return await store.record_feedback(generation_id, user_id + offset, thumbs)
        while time.time() < {start}:
            await asyncio.sleep(0.005)
        began = time.time()
        rate = await _drive(write, {total})
        print(json.dumps({{"began": began, "ended": time.time(), "writes": {total}}}))

asyncio.run(main())
"""


@contextmanager
def server(url: str | None) -> Iterator[tuple[str, object | None]]:
    """(admin URL, the server or None); a temporary server is stopped afterwards."""
    if url:
        yield url, None
        return
    sys.path.insert(0, str(REPO))
    from benchmarks.postgres_server import start_server

    started = start_server(fsync=True)  # durable commits, as a real server's
    try:
        yield started.url(), started
    finally:
        started.stop()


def fresh_database(admin_url: str, name: str) -> str:
    """A new database beside `admin_url`'s; returns its URL."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


async def _prepare(url: str, generations: int = 10) -> None:
    async with Store.open(url) as store:
        for n in range(generations):
            generation_id = await store.record_generation(
                user_id=1, task="story", messages=[{"role": "user", "content": f"p{n}"}],
                params={"seed": n}, model_id="smollm2-135m", guild_id=100,
            )  # fmt: skip
            await store.finish_generation(generation_id, "text", "stop", 40, 120, 80.0, 2400.0)


def bench_writes(admin_url: str, total: int, processes: int) -> float:
    """Committed writes/s of `processes` processes, each `total` writes by 50 tasks."""
    url = fresh_database(admin_url, f"muse_bench_writes_{processes}")
    asyncio.run(_prepare(url))
    start = time.time() + 3.0  # every child connected and migrated by then
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CHILD.format(repo=str(REPO), url=url, index=index, start=start, total=total),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for index in range(processes)
    ]
    results = []
    for child in children:
        out, _ = child.communicate(timeout=600)
        if child.returncode != 0:
            raise RuntimeError(f"a writer process failed ({child.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    began = min(r["began"] for r in results)
    ended = max(r["ended"] for r in results)
    return sum(r["writes"] for r in results) / (ended - began)


def load_export_database(admin_url: str, sqlite_db: Path) -> tuple[str, float]:
    """The benchmark's SQLite export database copied into a PostgreSQL one (`muse db copy`)."""
    url = fresh_database(admin_url, "muse_bench_export")
    began = time.perf_counter()
    copy_database(sqlite_db, url)
    return url, time.perf_counter() - began
