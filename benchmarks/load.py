"""Load and faults: many users at once, through the real discord.py client, the Discord API
emulator and the real default model. Prints figures; it is not a test.

    .venv/bin/python benchmarks/load.py [--users 64] [--max-tokens 48] [--queue-size 48]

Runs, in one process (so a probe task can measure the bot's event-loop lag):
  1. one request alone (the baseline throughput);
  2. `--users` interactions at once from as many users in one guild: callback latency (p50,
     p99), finished + refused == users (refusals say "busy — try again in N s"), completed
     throughput across all as a ratio to the baseline;
  3. the same with one PATCH in five answered 429 (`retry_after`, `Via` header);
  4. the same with 5 % of PATCHes answered 500;
and for 2–4 checks that every final message shows the text the database holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bot.cli.wiring import presets_from  # noqa: E402
from bot.core.settings import Settings  # noqa: E402
from bot.discord.client import MuseBot  # noqa: E402
from generation.engine.local_engine import Engine, EngineConfig  # noqa: E402
from generation.model.loading import load_model  # noqa: E402
from storage.store import Store  # noqa: E402
from tests.discord_emulator import DiscordEmulator, InteractionRecord, run_bot  # noqa: E402

PROMPT = "Write a short poem about the sea."
REFUSED = "busy — try again in"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


class LagProbe:
    """A task in the bot's loop that sleeps `interval_s` and records how late it wakes."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval_s)
            self.samples.append((loop.time() - start - self.interval_s) * 1000)

    @contextlib.asynccontextmanager
    async def measuring(self) -> AsyncIterator[LagProbe]:
        self.samples = []
        self._task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class Outcome:
    """What one burst did."""

    label: str
    records: list[InteractionRecord]
    wall_s: float
    tokens: int
    lag_ms: list[float]
    finished: int = 0
    refused: int = 0
    other: list[str] = field(default_factory=list)
    mismatched: list[int] = field(default_factory=list)

    @property
    def callback_ms(self) -> list[float]:
        return [r.callback_ms for r in self.records if r.callback_ms is not None]


def finished(record: InteractionRecord) -> bool:
    original = record.original
    return original is not None and any("muse:rate:" in c for c in original.custom_ids())


def answered_ephemeral(record: InteractionRecord) -> bool:
    return record.original is not None and record.original.ephemeral


def refused(record: InteractionRecord) -> bool:
    original = record.original
    return original is not None and original.ephemeral and REFUSED in original.content


async def settle(record: InteractionRecord, timeout_s: float) -> None:
    await record.wait_until(lambda r: finished(r) or answered_ephemeral(r), timeout_s)


async def burst(
    emu: DiscordEmulator,
    bot: MuseBot,
    users: list[str],
    max_tokens: int,
    label: str,
    timeout_s: float,
) -> Outcome:
    """Every user sends /generate at once; wait until each is finished or refused."""
    probe = LagProbe()
    first_id = max_generation_id(bot.app.store.path)
    async with probe.measuring():
        start = time.perf_counter()
        options = {"prompt": PROMPT, "max_tokens": max_tokens}
        records = await asyncio.gather(
            *(emu.slash_command("generate", options, user=user) for user in users)
        )
        results = await asyncio.gather(
            *(settle(r, timeout_s) for r in records), return_exceptions=True
        )
        wall = time.perf_counter() - start
    generations = generations_after(bot.app.store.path, first_id)
    outcome = Outcome(
        label, list(records), wall, sum(g[1] or 0 for g in generations), probe.samples
    )
    for record, result in zip(records, results, strict=True):
        if finished(record):
            outcome.finished += 1
        elif refused(record):
            outcome.refused += 1
        else:
            shown = record.original.content if record.original else "(no answer)"
            outcome.other.append(f"{result!r}: {shown[:80]}")
    by_message = {message_id: output for _, _, message_id, output in generations}
    for record in records:
        if finished(record):
            output = by_message.get(record.original.id)
            if output is None or output.strip() not in record.original.content:
                outcome.mismatched.append(record.id)
    return outcome


def max_generation_id(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute("SELECT coalesce(max(id), 0) FROM generations").fetchone()[0]


def generations_after(db: Path, after_id: int) -> list[tuple[int, int, int, str]]:
    """(id, tokens_out, message_id, output) of the generations after `after_id`."""
    sql = "SELECT id, tokens_out, message_id, output FROM generations WHERE id > ?"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute(sql, (after_id,)).fetchall()


def report(outcome: Outcome, baseline_tps: float, users: int) -> None:
    cb = outcome.callback_ms
    acked = sum(1 for ms in cb if ms < 3000)
    tps = outcome.tokens / outcome.wall_s
    print(f"\n== {outcome.label}")
    print(f"  acknowledged within 3 s : {acked}/{users}")
    print(f"  callback_ms p50 / p99   : {percentile(cb, 50):.0f} / {percentile(cb, 99):.0f} ms")
    print(
        f"  finished + refused      : {outcome.finished} + {outcome.refused} = "
        f"{outcome.finished + outcome.refused} of {users}"
        + (f"  (other: {outcome.other})" if outcome.other else "")
    )
    print(
        f"  final text == database  : {outcome.finished - len(outcome.mismatched)} of "
        f"{outcome.finished}"
    )
    print(
        f"  throughput              : {outcome.tokens} tokens in {outcome.wall_s:.1f} s = "
        f"{tps:.1f} tokens/s = {tps / max(baseline_tps, 1e-9):.1f}x one request alone"
    )
    lag = outcome.lag_ms
    print(
        f"  event-loop lag p50 / p99 / max : {percentile(lag, 50):.1f} / "
        f"{percentile(lag, 99):.1f} / {max(lag, default=0):.1f} ms ({len(lag)} samples)"
    )


async def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [f"user{i:02d}" for i in range(args.users)]
    loaded = load_model(None, args.device, Path.home() / ".cache" / "muse")
    config = EngineConfig(
        max_batch=args.max_batch,
        queue_size=args.queue_size,
        max_new_tokens=args.max_tokens,
        step_timeout_s=600,
    )
    engine = Engine(lambda: loaded, config).start()
    await engine.wait_ready()
    print(
        f"model {loaded.model_id} on {args.device}, torch threads {torch.get_num_threads()}, "
        f"max_batch {args.max_batch}, queue_size {args.queue_size}, max_tokens {args.max_tokens}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        async with DiscordEmulator(users=dict.fromkeys(names, 0)) as emu:
            settings = Settings(
                guild_ids=(emu.guild.id,),
                db_path=Path(tmp) / "muse.db",
                max_tokens=args.max_tokens,
                queue_size=args.queue_size,
                max_batch=args.max_batch,
                timeout_s=600.0,
                user_per_minute=0,
            )
            async with Store.open(settings.db_path) as store:
                bot = MuseBot(
                    settings=settings, store=store, engine=engine, presets=presets_from(settings)
                )
                async with run_bot(bot, emu):
                    alone = await burst(emu, bot, names[:1], args.max_tokens, "alone", 600)
                    baseline = alone.tokens / alone.wall_s
                    print(
                        f"\none request alone: {alone.tokens} tokens in {alone.wall_s:.1f} s "
                        f"= {baseline:.1f} tokens/s (callback {alone.callback_ms[0]:.0f} ms)"
                    )
                    scenarios: list[tuple[str, Callable[[], object]]] = [
                        (f"{args.users} at once", lambda: None),
                        (
                            f"{args.users} at once, 1 PATCH in 5 answered 429",
                            lambda: emu.faults.rate_limit(every=5, retry_after=0.3),
                        ),
                        (
                            f"{args.users} at once, 5 % of PATCHes answered 500",
                            lambda: emu.faults.server_error(fraction=0.05),
                        ),
                    ]
                    for label, arm in scenarios:
                        emu.faults.clear()
                        arm()
                        await asyncio.sleep(2)  # the last burst's slots and notices end
                        outcome = await burst(emu, bot, names, args.max_tokens, label, 900)
                        report(outcome, baseline, args.users)
                        print(f"  faults served           : {emu.faults.count()} so far")
                    emu.faults.clear()
    await engine.aclose()
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--queue-size", type=int, default=48, help="MUSE_QUEUE_SIZE")
    parser.add_argument("--max-batch", type=int, default=16, help="MUSE_MAX_BATCH")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(parse_args())))
