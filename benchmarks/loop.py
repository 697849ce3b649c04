"""The bot while the learning loop tunes beside it: sixteen users' throughput and how fast every
interaction is acknowledged, with a tune running and without, side by side in one run. Through
the real discord.py client, the Discord API emulator and the real default model (the bursts are
benchmarks/load.py's). Prints figures; it is not a test.

    .venv/bin/python benchmarks/loop.py --threads 2   # --users 16 --max-tokens 32 --rounds 2

The tune is the loop's own: the bot's `LoopRunner` starts `muse loop tune --guild ID` as a child
(niced, `MUSE_THREADS` one fewer than the engine's) once the guild has enough rated rows, and the
bursts "with a tune" run only while the child is between training steps 1 and its last. Rounds
alternate (without, with, without, …) so drift in the machine's load hits both alike.
Target: with a tune, the bot keeps ≥ 0.5 of its tokens/s and answers every interaction in 3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.load import Outcome, burst, percentile  # noqa: E402
from bot.cli.run import LOOP_TUNE  # noqa: E402
from bot.cli.wiring import presets_from  # noqa: E402
from bot.core.settings import Settings  # noqa: E402
from bot.discord.client import MuseBot  # noqa: E402
from generation.engine.local_engine import Engine, EngineConfig  # noqa: E402
from generation.model.loading import load_model  # noqa: E402
from storage.store import Store  # noqa: E402
from tests.discord_emulator import DiscordEmulator, run_bot  # noqa: E402

TUNE_STEPS = 100_000  # the tune outlasts the run; closing the bot kills it


async def rate_all(emu: DiscordEmulator, outcome: Outcome, users: list[str]) -> list[float]:
    """Each finished text rated 👍 by the next user (training rows from many members); the
    callback latency of every press."""
    presses = []
    for i, record in enumerate(outcome.records):
        if record.original is None:
            continue
        up = [c for c in record.original.custom_ids() if c.endswith(":up")]
        if up:
            rater = users[(i + 1) % len(users)]
            presses.append(emu.press_button(record.original, up[0], user=rater))
    done = await asyncio.gather(*presses)
    await asyncio.gather(*(p.wait_callback(15) for p in done), return_exceptions=True)
    return [p.callback_ms for p in done if p.callback_ms is not None]


async def tune_running(bot: MuseBot, guild_id: int, timeout_s: float) -> dict:
    """Wait until the loop's tune has taken a training step; its progress then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        loop = await bot.app.store.get_loop(guild_id)
        if loop.state == "training" and (loop.progress or {}).get("step"):
            return loop.progress
        await asyncio.sleep(0.5)
    raise TimeoutError(f"no tune step within {timeout_s:.0f} s: {loop.state} {loop.progress}")


def row(label: str, outcome: Outcome, acks: list[float], users: int) -> dict:
    every = outcome.callback_ms + acks
    return {
        "label": label,
        "tps": outcome.tokens / outcome.wall_s,
        "finished": outcome.finished,
        "refused": outcome.refused,
        "users": users,
        "ack_p50": percentile(every, 50),
        "ack_max": max(every, default=float("nan")),
        "acks": len(every),
        "within_3s": sum(ms < 3000 for ms in every),
        "lag_p99": percentile(outcome.lag_ms, 99),
    }


def table(rows: list[dict]) -> None:
    print("\n| round | tokens/s | finished | acknowledged < 3 s | ack p50 / max ms | lag p99 ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['label']} | {r['tps']:.1f} | {r['finished']}/{r['users']} | "
            f"{r['within_3s']}/{r['acks']} | {r['ack_p50']:.0f} / {r['ack_max']:.0f} | "
            f"{r['lag_p99']:.0f} |"
        )


async def main(args: argparse.Namespace) -> int:
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    names = [f"user{i:02d}" for i in range(args.users)]
    loaded = load_model(None, "cpu", Path.home() / ".cache" / "muse")
    config = EngineConfig(max_batch=args.users, queue_size=64, max_new_tokens=args.max_tokens)
    engine = Engine(lambda: loaded, config).start()
    await engine.wait_ready()
    print(
        f"model {loaded.model_id}, engine threads {threads}, tune threads "
        f"{max(1, threads - 1)} (niced), {args.users} users, max_tokens {args.max_tokens}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with DiscordEmulator(users=dict.fromkeys(names, 0)) as emu:
            settings = Settings(
                guild_ids=(emu.guild.id,), db_path=Path(tmp) / "muse.db",
                max_tokens=args.max_tokens, queue_size=64, max_batch=args.users,
                timeout_s=600.0, user_per_minute=0, threads=threads,
                adapters_dir=Path(tmp) / "adapters", loop_check_s=0.5,
                loop_max_steps=TUNE_STEPS,
            )  # fmt: skip
            os.environ["MUSE_ADAPTERS_DIR"] = str(settings.adapters_dir)  # the tune child's
            async with Store.open(settings.db_path) as store:
                bot = MuseBot(settings=settings, store=store, engine=engine,
                              presets=presets_from(settings), loop_command=LOOP_TUNE)  # fmt: skip
                async with run_bot(bot, emu):
                    warm = await burst(emu, bot, names, args.max_tokens, "warm-up", 600)
                    await rate_all(emu, warm, names)  # rows for the tune to learn from
                    for n in range(args.rounds):
                        without = await burst(emu, bot, names, args.max_tokens, "no tune", 600)
                        acks = await rate_all(emu, without, names)
                        results.append(row(f"{n + 1}: no tune", without, acks, args.users))
                        if n == 0:
                            await store.update_loop(emu.guild.id, enabled=True, min_examples=8)
                        progress = await tune_running(bot, emu.guild.id, 600)
                        beside = await burst(emu, bot, names, args.max_tokens, "tune", 600)
                        acks = await rate_all(emu, beside, names)
                        after = (await store.get_loop(emu.guild.id)).progress or {}
                        print(f"round {n + 1}: tune steps {progress.get('step')} → "
                              f"{after.get('step')} during the burst")  # fmt: skip
                        results.append(row(f"{n + 1}: tune beside", beside, acks, args.users))
                        await stop_tune(bot, emu.guild.id)
    await engine.aclose()
    table(results)
    alone = [r["tps"] for r in results if "no tune" in r["label"]]
    beside = [r["tps"] for r in results if "beside" in r["label"]]
    ratio = (sum(beside) / len(beside)) / (sum(alone) / len(alone))
    slow = sum(r["acks"] - r["within_3s"] for r in results if "beside" in r["label"])
    print(f"\nwith a tune beside: {ratio:.2f} of the throughput without (target ≥ 0.5); "
          f"{slow} interactions acknowledged after 3 s (target 0)")  # fmt: skip
    return 0


async def stop_tune(bot: MuseBot, guild_id: int) -> None:
    """Kill the running tune (as a stopped bot would) and let the next round start another."""
    runner = bot.app.loop
    task = getattr(runner, "_tune", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await bot.app.store.update_loop(guild_id, state="collecting", rows_at_last_tune=0)
    await asyncio.sleep(2)  # the child's memory is given back


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="the engine's torch threads")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(parse_args())))
