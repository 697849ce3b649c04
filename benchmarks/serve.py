"""`muse serve` against the in-process engine, side by side in one run (the CPU target of the
engine-process work: serve at 16 concurrent ≥ 0.95 of in-process).

    .venv/bin/python benchmarks/serve.py [--tokens 64] [--rounds 4] [--concurrency 16]

Both engines are built the way `muse run` builds them (`build_backend` here; `muse serve` as a
supervised child through `EngineProcess`, talked to by the OpenAI backend, as with
`MUSE_ENGINE_PROCESS=1`), load the default model, and are warmed up. Then rounds alternate
(in-process, then serve), each round `--concurrency` streams of `--tokens` new tokens
(`ignore_eos`, sampling), so drift in the machine's load hits both alike. Prints every round's
tokens/s and the ratio of the medians. Only one of the two works at a time; the other is idle.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.throughput import engine_concurrency  # noqa: E402
from bot.cli.engine_process import engine_process  # noqa: E402
from bot.cli.wiring import build_backend  # noqa: E402
from bot.core.settings import Settings  # noqa: E402
from bot.core.shutdown import close_engine  # noqa: E402
from generation.backend import Backend  # noqa: E402


def settings(concurrency: int, tokens: int) -> Settings:
    cache = Path(os.environ.get("MUSE_CACHE_DIR") or Path.home() / ".cache" / "muse")
    return Settings(
        device="cpu",
        cache_dir=cache,
        max_batch=concurrency,
        queue_size=4 * concurrency,
        max_tokens=max(512, tokens),
        timeout_s=600.0,
    )


async def warm(backend: Backend) -> None:
    await engine_concurrency(backend, 2, 2, 8)  # type: ignore[arg-type]


async def main(tokens: int, rounds: int, concurrency: int) -> None:
    config = settings(concurrency, tokens)
    local = build_backend(config, on_fatal=lambda why: print(f"engine fatal: {why}"))
    figures: dict[str, list[float]] = {"in-process": [], "muse serve": []}
    try:
        async with engine_process(config) as served:
            await local.wait_ready()  # type: ignore[attr-defined]
            await warm(local)
            await warm(served)
            for number in range(1, rounds + 1):
                for name, backend in (("in-process", local), ("muse serve", served)):
                    rate = await engine_concurrency(backend, concurrency, concurrency, tokens)  # type: ignore[arg-type]
                    figures[name].append(rate)
                    print(f"round {number}: {name:<10} {rate:7.1f} tokens/s", flush=True)
    finally:
        await close_engine(local)
    inside, served_rate = (statistics.median(figures[k]) for k in ("in-process", "muse serve"))
    print(
        f"\n{concurrency} streams x {tokens} new tokens, {rounds} rounds, median tokens/s: "
        f"in-process {inside:.1f}, muse serve {served_rate:.1f}"
    )
    rounds = " ".join(
        f"{b / a:.2f}" for a, b in zip(figures["in-process"], figures["muse serve"], strict=True)
    )
    print(f"muse serve / in-process: {served_rate / inside:.2f} (target ≥ 0.95); by round {rounds}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(main(args.tokens, args.rounds, args.concurrency))
