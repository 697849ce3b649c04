"""Storage benchmark: committed feedback writes per second, and a 1M-generation export.

    .venv/bin/python benchmarks/storage.py [--rows 1000000] [--writes 20000] [--dir DIR]
        [--postgres URL | --no-postgres]

(1) 50 concurrent tasks each await `record_feedback`-equivalent writes: one aiosqlite connection
with one commit per write (the baseline), the writer thread with one commit per write, and the
writer thread with group commit (the Store). Same SQL, same machine, one run.
(2) A database of `--rows` generations with feedback is built with executemany, then each export
format runs in a child process (`muse export`'s handler) that reports its wall time and peak
RSS (and its CPU time: wall time on a shared machine depends on the neighbours). Targets:
>= 5,000 writes/s; export <= 30 s and <= 200 MB.
(3) The same on PostgreSQL (benchmarks/storage_pg.py), in the same run: committed writes/s
from one and from four processes (50 writers each, every process its own Store), and the
export of the same database copied into PostgreSQL (`muse db copy`), its peak memory.
Targets: >= 2,000 writes/s from four processes; both exports under 100 MB peak.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiosqlite

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from storage import writes  # noqa: E402
from storage.db import configure, create_file  # noqa: E402
from storage.migrations import migrate  # noqa: E402
from storage.store import Store  # noqa: E402
from storage.writer import Writer  # noqa: E402

TASKS = 50
NOW = "2025-03-01T12:00:00.000Z"
MESSAGES = [
    {"role": "system", "content": "You are Muse, a storyteller for a friendly Discord server."},
    {"role": "user", "content": "Write a short story about a dragon who is afraid of the dark."},
]
OUTPUT = "Once upon a time, in a cave high above the sleeping valley, " * 6


# --- (1) writes ------------------------------------------------------------------------


def _fresh_db(directory: Path, name: str, generations: int = 10) -> Path:
    path = directory / name
    create_file(path)
    conn = sqlite3.connect(path, isolation_level=None)
    configure(conn)
    migrate(conn)
    conn.execute("BEGIN")
    for _ in range(generations):
        generation_id = writes.record_generation(conn, _generation_values())
        finished = {"output": OUTPUT, "finish_reason": "stop", "tokens_in": 40, "tokens_out": 120,
                    "ttft_ms": 80.0, "total_ms": 2400.0, "status": "done", "error": None,
                    "finished_utc": NOW}  # fmt: skip
        writes.finish_generation(conn, generation_id, finished)
    conn.execute("COMMIT")
    conn.close()
    return path


def _generation_values() -> dict[str, object]:
    return {
        "parent_id": None, "conversation_id": None, "user_id": 1, "guild_id": 100,
        "channel_id": 200, "message_id": None, "task": "story", "fields_json": "{}",
        "messages_json": json.dumps(MESSAGES), "params_json": '{"seed": 1}',
        "model_id": "smollm2-135m", "model_revision": None, "created_utc": NOW,
    }  # fmt: skip


async def _drive(write, total: int) -> float:
    """`TASKS` tasks share `total` writes; returns committed writes per second."""
    per_task = total // TASKS

    async def task(index: int) -> None:
        for n in range(per_task):
            await write(1 + n % 10, 10_000 + index * per_task + n % 7, "up" if n % 3 else "down")

    start = time.perf_counter()
    await asyncio.gather(*(task(i) for i in range(TASKS)))
    return per_task * TASKS / (time.perf_counter() - start)


async def _aiosqlite_baseline(path: Path, total: int) -> float:
    """The straightforward design: one aiosqlite connection, a lock, one commit per write."""
    conn = await aiosqlite.connect(path, isolation_level=None)
    await conn.execute("PRAGMA synchronous = NORMAL")
    await conn.execute("PRAGMA foreign_keys = ON")
    lock = asyncio.Lock()

    async def write(generation_id: int, user_id: int, thumbs: str) -> None:
        async with lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                async with conn.execute(
                    "SELECT user_id, status FROM generations WHERE id = ?", (generation_id,)
                ) as cursor:
                    owner = await cursor.fetchone()
                verdict = 1 if thumbs == "up" else -1
                await conn.execute(
                    """INSERT INTO feedback (generation_id, user_id, thumbs, verdict, is_self,
                           created_utc, updated_utc) VALUES (?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT (generation_id, user_id) DO UPDATE SET
                           thumbs = excluded.thumbs, verdict = excluded.verdict,
                           updated_utc = excluded.updated_utc""",
                    (generation_id, user_id, thumbs, verdict, int(owner[0] == user_id), NOW, NOW),
                )
                await conn.execute(
                    """INSERT INTO feedback_events (generation_id, user_id, thumbs, verdict,
                           created_utc) VALUES (?, ?, ?, ?, ?)""",
                    (generation_id, user_id, thumbs, verdict, NOW),
                )
                async with conn.execute(
                    "SELECT SUM(verdict) FROM feedback WHERE generation_id = ?", (generation_id,)
                ) as cursor:
                    await cursor.fetchone()
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise

    try:
        return await _drive(write, total)
    finally:
        await conn.close()


async def _writer_thread(path: Path, total: int, max_batch: int) -> float:
    def opener() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, cached_statements=512)
        configure(conn)
        return conn

    writer = Writer(opener, max_batch=max_batch)
    await writer.start()

    def write(generation_id: int, user_id: int, thumbs: str):
        return writer.submit(
            writes.record_feedback, generation_id, user_id, thumbs, None, None, NOW
        )

    try:
        return await _drive(write, total)
    finally:
        await writer.close()


async def _store(path: Path, total: int) -> float:
    async with Store.open(path) as store:
        return await _drive(store.record_feedback, total)


def bench_writes(directory: Path, total: int) -> list[tuple[str, float]]:
    runs = [
        ("aiosqlite, one commit per write", lambda p: _aiosqlite_baseline(p, total)),
        ("writer thread, one commit per write", lambda p: _writer_thread(p, total, 1)),
        ("Store: writer thread, group commit", lambda p: _store(p, total)),
    ]
    results = []
    for index, (name, run) in enumerate(runs):
        path = _fresh_db(directory, f"writes-{index}.db")
        results.append((name, asyncio.run(run(path))))
    return results


# --- (2) export --------------------------------------------------------------------------


def build_export_db(path: Path, rows: int, seed: int = 1) -> float:
    """`rows` generations (every third a regeneration of the one before), 1-3 raters each."""
    rng = random.Random(seed)
    start = time.perf_counter()
    create_file(path)
    conn = sqlite3.connect(path, isolation_level=None)
    configure(conn)
    migrate(conn)
    conn.execute("PRAGMA synchronous = OFF")  # building only; the store never does this
    messages = json.dumps(MESSAGES)

    def generations() -> Iterator[tuple[object, ...]]:
        root = 1
        for gid in range(1, rows + 1):
            if gid % 3 != 0:
                root = gid
            parent = gid - 1 if gid % 3 == 0 else None
            params = json.dumps({"seed": gid, "temperature": 0.8, "top_p": 0.95})
            yield (
                gid, parent, root, 1000 + gid % 5000, 100 + gid % 7, 555, gid * 10, "story",
                '{"prompt": "a dragon"}', messages, params, "smollm2-135m", OUTPUT, "stop",
                40, 120, 80.0, 2400.0, "done", NOW, NOW,
            )  # fmt: skip

    def feedback() -> Iterator[tuple[object, ...]]:
        for gid in range(1, rows + 1):
            for rater in rng.sample(range(1, 9000), rng.randint(1, 3)):
                verdict = rng.choice((1, 1, 0, -1))
                thumbs = {1: "up", -1: "down"}.get(verdict)
                stars = 3 if verdict == 0 else None
                yield (gid, 20_000 + rater, thumbs, stars, verdict, 0, NOW, NOW)

    conn.execute("BEGIN")
    conn.executemany(
        """INSERT INTO generations (id, parent_id, root_id, user_id, guild_id, channel_id,
               message_id, task, fields_json, messages_json, params_json, model_id, output,
               finish_reason, tokens_in, tokens_out, ttft_ms, total_ms, status, created_utc,
               finished_utc)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        generations(),
    )
    conn.executemany(
        """INSERT OR IGNORE INTO feedback (generation_id, user_id, thumbs, stars, verdict,
               is_self, created_utc, updated_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
        feedback(),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - start


_CHILD = """
import json, resource, sys, time, argparse
sys.path.insert(0, {repo!r})
from bot.cli import data as cli_data
parser = argparse.ArgumentParser()
cli_data.add_subcommands(parser.add_subparsers())
args = parser.parse_args(["export", "--format", {fmt!r}, "--out", {out!r}, "--db", {db!r}])
start = time.perf_counter()
code = args.func(args)
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu, peak_mb = usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
print(json.dumps({{"code": code, "seconds": seconds, "cpu": cpu, "peak_mb": peak_mb}}))
"""


def bench_export(db: Path | str, fmt: str, out: Path) -> dict[str, float]:
    child = subprocess.run(
        [sys.executable, "-c", _CHILD.format(repo=str(REPO), fmt=fmt, out=str(out), db=str(db))],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(child.stdout.strip().splitlines()[-1])
    with out.open("rb") as lines:
        result["rows"] = sum(1 for _ in lines)
    result["out_mb"] = out.stat().st_size / 2**20
    out.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="generations to export")
    parser.add_argument("--writes", type=int, default=20_000, help="writes per write run")
    parser.add_argument("--formats", default="sft,kto,dpo,raw")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the databases")
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL database to fill")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        print(f"(1) committed feedback writes, {TASKS} concurrent tasks, {args.writes:,} writes")
        results = bench_writes(directory, args.writes)
        baseline = results[0][1]
        print(f"    {'how':<40} {'writes/s':>10} {'vs baseline':>12}")
        for name, rate in results:
            print(f"    {name:<40} {rate:>10,.0f} {rate / baseline:>11.1f}x")
        db = directory / "export.db"
        built = build_export_db(db, args.rows)
        size = db.stat().st_size / 2**20
        print(f"\n(2) export of {args.rows:,} generations with feedback "
              f"(built in {built:.0f} s, {size:,.0f} MiB)")  # fmt: skip
        _exports(db, args.formats, directory)
        if not args.no_postgres:
            _postgres(args, db, directory)


def _exports(db: Path | str, formats: str, directory: Path) -> None:
    print(
        f"    {'format':<7} {'rows':>10} {'wall s':>7} {'CPU s':>6} {'peak RSS MB':>12} "
        f"{'out MiB':>8}"
    )
    for fmt in formats.split(","):
        r = bench_export(db, fmt, directory / f"{fmt}.jsonl")
        print(
            f"    {fmt:<7} {r['rows']:>10,} {r['seconds']:>7.1f} {r['cpu']:>6.1f} "
            f"{r['peak_mb']:>12.0f} {r['out_mb']:>8,.0f}"
        )


def _postgres(args: argparse.Namespace, db: Path, directory: Path) -> None:
    from benchmarks import storage_pg

    with storage_pg.server(args.postgres) as (admin_url, _):
        print(f"\n(3) PostgreSQL: committed feedback writes, {TASKS} tasks per process")
        for processes in (1, 4):
            rate = storage_pg.bench_writes(admin_url, args.writes, processes)
            print(f"    {processes} process(es), {processes * args.writes:,} writes: "
                  f"{rate:>10,.0f} writes/s")  # fmt: skip
        url, seconds = storage_pg.load_export_database(admin_url, db)
        print(f"    export of the same {args.rows:,} generations from PostgreSQL "
              f"(copied in with muse db copy in {seconds:.0f} s)")  # fmt: skip
        _exports(url, args.formats, directory)


if __name__ == "__main__":
    main()
