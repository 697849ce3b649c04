"""`MUSE_THREADS` side by side: the engine as `muse run` builds it, with each thread count in turn.

    .venv/bin/python benchmarks/threads.py [--threads 1 2] [--rounds 2]

Each round builds an engine per thread count (one at a time: two live engines in one process slow
each other), warms it up and prints tokens/s for one request at a time (3 × 64 tokens) and for 16
sent together (64 tokens each), with the default weights (`MUSE_WEIGHTS=auto`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.throughput import engine_concurrency, engine_run  # noqa: E402
from bot.cli.wiring import build_backend  # noqa: E402
from bot.core.settings import Settings  # noqa: E402
from bot.core.shutdown import close_engine  # noqa: E402
from generation.model.loading import default_cache_dir  # noqa: E402


async def measure(threads: int) -> tuple[float, float]:
    settings = Settings(device="cpu", cache_dir=default_cache_dir(), threads=threads, timeout_s=600)
    engine = build_backend(settings, on_fatal=lambda why: print(f"engine fatal: {why}"))
    try:
        await engine.wait_ready()  # type: ignore[attr-defined]
        await engine_concurrency(engine, 2, 2, 8)  # type: ignore[arg-type]  # warm up
        alone = await engine_concurrency(engine, 3, 1, 64)  # type: ignore[arg-type]
        together = await engine_run(engine, 16, 64)  # type: ignore[arg-type]
    finally:
        await close_engine(engine)
    return alone, together


async def main(counts: list[int], rounds: int) -> None:
    for number in range(1, rounds + 1):
        for threads in counts:
            alone, together = await measure(threads)
            print(
                f"round {number}: MUSE_THREADS={threads}: one request {alone:.1f} tokens/s, "
                f"16 together {together:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.threads, args.rounds))
