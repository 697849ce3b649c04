"""Muse's local engine against llama.cpp's own `llama-server`, side by side in one run (CPU).

    .venv/bin/python benchmarks/peers.py [--tokens 64] [--rounds 2] [--weights int4 int8 fp32]
                                         [--threads 2] [--big] [--quality]
    .venv/bin/python benchmarks/peers.py --gguf PATH [--memory auto 1GiB] [--tokens 32]

`--gguf PATH`: any GGUF file, both as servers in processes of their own: `llama-server` and
`muse serve` (`MUSE_MODEL=PATH`, its defaults, once per `--memory` value: `MUSE_MEMORY`), each
started and timed to its first `/health` 200 (Muse twice: the first start converts the file when
it is not cached yet, the second is the one a restart sees), then rounds alternating one request
at a time and 16 together, then each process's peak resident memory (VmHWM). Make a
1.7B-shaped Q4_1 file with `benchmarks/make_gguf.py`.

The peer is `llama-server` built from llama-cpp-python 0.3.36's vendored llama.cpp
(`benchmarks/llama_build.py`, cached under `.venv/`), serving the same GGUF as Muse's default
model with `--parallel 16 --no-repack` (the AMX repacking faults on a virtual Xeon with AMX)
and the same thread count, driven by plain streamed HTTP requests. Muse's engine runs the model
with each `--weights` choice (`MUSE_WEIGHTS`), on its worker thread as `muse run` does. Rounds
alternate between all of them, so drift in the machine's load hits each alike; medians printed.

Rows: one request at a time; 16 sent together; 16 staggered (Muse only), one every 0.1 s against
the padded `generate` bound of the same weights, and one every 0.5 s against what those arrivals
allow at most (the last arrives at 7.5 s: a fast engine finishes each request before the next
arrives, so that row measures the arrivals, not the batching); `--big`: a SmolLM2-1.7B-shaped
model with random weights (one request, and 16 together; `--big-tokens` new tokens each, by
default `--tokens`). `--quality`: each choice against fp32 along
fp32's greedy text of 16 prompts, 32 tokens (top-token agreement, the widest near-tie that
flipped, the largest logit difference), teacher-forced through the model's forward and, for a
request decoding alone, through steps of one row (the C++ step). Not a test: figures vary on a
shared machine; ratios measured in one run compare.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import aiohttp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.llama_build import llama_server_binary  # noqa: E402
from benchmarks.throughput import (  # noqa: E402
    engine_concurrency,
    engine_run,
    off_main,
    padded,
    prompt,
    raw_server,
)
from bot.cli.engine_process import free_port  # noqa: E402
from generation.engine.local_engine import Engine, EngineConfig  # noqa: E402
from generation.model import prefill_mode  # noqa: E402
from generation.model.agreement import along_greedy, stepped_logits, teacher_forced  # noqa: E402
from generation.model.batch_runner import BatchRunner  # noqa: E402
from generation.model.loading import (  # noqa: E402
    LoadedModel,
    default_cache_dir,
    default_model_path,
    load_model,
    with_weights,
)
from generation.model.memory import peak_resident_bytes  # noqa: E402
from generation.model.prompting import encode_messages  # noqa: E402

SLOTS = 16
OVERLAPPING_S = 0.1  # the staggered row whose arrivals overlap: 16 within 1.5 s
SPARSE_S = 0.5  # the earlier benchmarks' staggered row (benchmarks/throughput.py)


class LlamaCppServer:
    """`llama-server` on a free loopback port, serving `model` (default: the default GGUF)."""

    READY_TIMEOUT_S = 120.0
    NAME = "llama-server"

    def __init__(self, threads: int, model: Path | None = None) -> None:
        self.threads = threads
        self.model = model or default_model_path()
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_s = 0.0  # from the start of the process to its first /health 200

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> LlamaCppServer:
        binary = await asyncio.to_thread(llama_server_binary)
        command = [
            str(binary), "-m", str(self.model), "--host", "127.0.0.1",
            "--port", str(self.port), "-t", str(self.threads), "-np", str(SLOTS),
            "-c", str(SLOTS * 512), "--no-repack",
        ]  # fmt: skip
        await self.start(command, None)
        return self

    async def start(self, command: list[str], env: dict[str, str] | None) -> None:
        """Start `command` and wait for its first /health 200 (`ready_s`)."""
        # A file, never a pipe nobody reads: a full pipe would block the server.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __aexit__)
        started = time.monotonic()
        self.process = subprocess.Popen(  # noqa: ASYNC220 (starting it does not wait)
            command, stdout=self.log, stderr=subprocess.STDOUT, env=env
        )
        name = self.NAME
        async with aiohttp.ClientSession() as session:
            deadline = started + self.READY_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{name} exited: {self.log_tail()}")
                try:
                    async with session.get(f"{self.base_url}/health") as resp:
                        if resp.status == 200:
                            self.ready_s = time.monotonic() - started
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{name} did not become healthy in {self.READY_TIMEOUT_S:.0f} s")

    def peak_rss(self) -> int:
        """The process's peak resident memory so far, in bytes (VmHWM)."""
        assert self.process is not None
        return peak_resident_bytes(self.process.pid)

    def log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:].decode(errors="replace")

    async def __aexit__(self, *exc: object) -> None:
        if exc[0] is not None:
            print(f"{self.NAME}'s last lines:\n{self.log_tail()}", file=sys.stderr)
        if self.process is not None:
            self.process.terminate()
            await asyncio.to_thread(self.process.wait, 30)
        self.log.close()


class MuseServer(LlamaCppServer):
    """`muse serve` on a free loopback port serving the GGUF `model` with its defaults and
    `MUSE_MEMORY=memory`, in a process of its own (the conversion, at its first start, too)."""

    READY_TIMEOUT_S = 3600.0  # a first start converts the file
    NAME = "muse serve"

    def __init__(self, threads: int, model: Path, memory: str) -> None:
        super().__init__(threads, model)
        self.memory = memory

    async def __aenter__(self) -> MuseServer:
        env = {
            **os.environ,
            "MUSE_MODEL": str(self.model), "MUSE_MEMORY": self.memory,
            "MUSE_THREADS": str(self.threads), "MUSE_MAX_BATCH": str(SLOTS),
            "MUSE_MAX_TOKENS": "512", "MUSE_TIMEOUT_S": "600", "MUSE_LOG_LEVEL": "INFO",
        }  # fmt: skip
        command = [sys.executable, "-m", "bot.cli", "serve", "--port", str(self.port)]
        await self.start(command, env)
        return self


async def llama_run(server: LlamaCppServer, n: int, concurrency: int, tokens: int) -> float:
    """Tokens/s of `n` streamed chat completions, `concurrency` at a time, with the sampling of
    Muse's benchmark requests and every answer exactly `tokens` long."""
    base = f"{server.base_url}/v1"
    extra = {"ignore_eos": True}
    return await raw_server(base, n, concurrency, tokens, extra, fresh_connections=True)


async def gguf_main(args: argparse.Namespace) -> None:
    """`--gguf`: llama-server and `muse serve` on the same file, side by side."""
    path = Path(args.gguf)
    figures: dict[str, list[float]] = defaultdict(list)
    facts: dict[str, str] = {}
    async with LlamaCppServer(args.threads, path) as llama:
        facts["llama-server: ready"] = f"{llama.ready_s:.1f} s"
        await llama_run(llama, 2, 2, 8)  # warm up
        for memory in args.memory:
            async with MuseServer(args.threads, path, memory) as first:
                facts[f"muse serve {memory}: first start ready"] = f"{first.ready_s:.1f} s"
                peak = first.peak_rss() / 2**30  # the conversion, where this start made it
                facts[f"muse serve {memory}: first start peak resident"] = f"{peak:.2f} GiB"
            async with MuseServer(args.threads, path, memory) as muse:
                facts[f"muse serve {memory}: second start ready"] = f"{muse.ready_s:.1f} s"
                await llama_run(muse, 2, 2, 8)
                for _ in range(args.rounds):
                    for name, server in (("llama-server", llama), (f"muse {memory}", muse)):
                        for concurrency in (1, SLOTS):
                            rate = await llama_run(server, concurrency, concurrency, args.tokens)
                            figures[f"{name} {concurrency} together"].append(rate)
                facts[f"muse serve {memory}: peak resident"] = f"{muse.peak_rss() / 2**30:.2f} GiB"
        facts["llama-server: peak resident"] = f"{llama.peak_rss() / 2**30:.2f} GiB"
    gguf_report(path, figures, facts, args)


def gguf_report(
    path: Path, figures: dict[str, list[float]], facts: dict[str, str], args: argparse.Namespace
) -> None:
    median = {name: statistics.median(values) for name, values in figures.items()}
    print(
        f"\n{path.name}, {args.tokens} new tokens each, {args.threads} threads, {args.rounds} "
        f"rounds alternating (median; every round in brackets), torch {torch.__version__}\n"
    )
    for name, values in figures.items():
        rounds = " ".join(f"{v:.1f}" for v in values)
        print(f"{name:<28} {median[name]:7.1f} tokens/s  ({rounds})")
    print()
    for what, value in facts.items():
        print(f"{what:<44} {value}")
    llama_peak = float(facts["llama-server: peak resident"].split()[0])
    print()
    for memory in args.memory:
        peak = float(facts[f"muse serve {memory}: peak resident"].split()[0])
        ratios = [f"peak memory {peak / llama_peak:.2f}x llama-server's"]
        for concurrency in (1, SLOTS):
            mine = median[f"muse {memory} {concurrency} together"]
            theirs = median[f"llama-server {concurrency} together"]
            ratios.append(f"{concurrency} together {mine / theirs:.2f}x")
        print(f"muse MUSE_MEMORY={memory}: " + ", ".join(ratios))


def loaded_variants(choices: list[str]) -> dict[str, LoadedModel]:
    base = load_model(None, "cpu", default_cache_dir(), weights="fp32")
    return {choice: with_weights(base, choice, copy=True) for choice in choices}


def big_model(weights: str) -> LoadedModel:
    from generation.model.random_model import random_model

    tokenizer = load_model(None, "cpu", default_cache_dir(), weights="fp32").tokenizer
    return with_weights(random_model("smollm2-1.7b", tokenizer, "cpu", torch.float32), weights)


async def started(loaded: LoadedModel) -> Engine:
    engine = Engine(lambda: loaded, EngineConfig(max_batch=SLOTS, queue_size=64)).start()
    await engine.wait_ready()
    await engine_concurrency(engine, 2, 2, 8)  # warm up
    return engine


def quality(variants: dict[str, LoadedModel], prompts: int = 16) -> None:
    """Each choice against fp32 along fp32's greedy text (teacher-forced, 32 tokens): how often
    the top token agrees, the widest fp32 near-tie that flipped, the largest logit difference."""
    reference = variants.get("fp32")
    if reference is None:
        print("quality: needs fp32 among --weights")
        return
    many_rows = prefill_mode.WIDE_ROWS
    for name, other in variants.items():
        if name == "fp32":
            continue
        # The teacher-forced forward has ~70 rows: WIDE_ROWS decides how int4 multiplies; and
        # a request decoding alone takes steps of one row (the C++ step, if built).
        forced, runner = teacher_forced, BatchRunner(other.model, other.tokenizer.pad_token_id)
        ways = {"int kernels": (10**9, forced)}
        if name == "int4":
            ways["bf16 weights"] = (many_rows, forced)
        if runner._decode is not None and runner._decode.native is not None:
            ways["C++ steps of one row"] = (10**9, functools.partial(stepped, runner))
        for way, (wide_rows, compared) in ways.items():
            prefill_mode.WIDE_ROWS = wide_rows
            agree = positions = 0
            flipped, largest = 0.0, 0.0
            for i in range(prompts):
                want, got = compared(reference, other, prompt(i)[0].content)
                best = want.topk(2).values
                margin = best[:, 0] - best[:, 1]
                same = want.argmax(-1) == got.argmax(-1)
                agree, positions = agree + int(same.sum()), positions + len(same)
                flipped = max([flipped, *margin[~same].tolist()])
                largest = max(largest, float((want - got).abs().max()))
            print(
                f"quality {name} ({way}) vs fp32 (teacher-forced, 32 tokens x {prompts} "
                f"prompts): top token agrees at {agree}/{positions}; widest fp32 tie that "
                f"flipped {flipped:.2f} logits; largest logit difference {largest:.2f}"
            )
    prefill_mode.WIDE_ROWS = many_rows


def stepped(
    runner: BatchRunner, reference: LoadedModel, other: LoadedModel, text: str, tokens: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """As `teacher_forced`, with `other`'s logits from decoding steps of one row on `runner`."""
    ids, whole, want = along_greedy(reference, text, tokens)
    return want, stepped_logits(runner, ids, whole)


async def main(args: argparse.Namespace) -> None:
    torch_threads = args.threads
    await off_main(torch.set_num_threads, torch_threads)
    figures: dict[str, list[float]] = defaultdict(list)
    variants = await off_main(loaded_variants, args.weights)
    ids = [encode_messages(variants[args.weights[0]].tokenizer, prompt(i), 4096) for i in range(16)]
    async with LlamaCppServer(torch_threads) as server:
        await llama_run(server, 2, 2, 8)  # warm up
        for _ in range(args.rounds):
            figures["llama-server c=1"].append(await llama_run(server, 4, 1, args.tokens))
            figures["llama-server 16 together"].append(await llama_run(server, 16, 16, args.tokens))
            for name, loaded in variants.items():
                await muse_round(name, loaded, ids, args.tokens, figures)
    if args.quality:
        await off_main(quality, variants)
    if args.big:
        for name in args.weights:
            engine = await started(await off_main(big_model, name))
            big_tokens = args.big_tokens or args.tokens
            one = await engine_concurrency(engine, 2, 1, big_tokens)
            figures[f"1.7B-shaped {name} c=1"].append(one)
            figures[f"1.7B-shaped {name} 16 together"].append(
                await engine_run(engine, 16, big_tokens)
            )
            await engine.aclose()
    report(figures, args)


async def muse_round(
    name: str, loaded: LoadedModel, ids: list[list[int]], tokens: int, figures: dict
) -> None:
    """One round of Muse's rows with `loaded`, on an engine of its own that is closed after:
    two live engines in one process slow each other (measured: one request ran at 30 tokens/s
    beside an idle second engine, 63 alone), so only one ever exists at a time."""
    engine = await started(loaded)
    try:
        figures[f"muse {name} c=1"].append(await engine_concurrency(engine, 4, 1, tokens))
        figures[f"muse {name} 16 together"].append(await engine_run(engine, 16, tokens))
        for spacing in (OVERLAPPING_S, SPARSE_S):
            figures[f"muse {name} 16 staggered {spacing} s"].append(
                await engine_run(engine, 16, tokens, spacing)
            )
    finally:
        await engine.aclose()
    figures[f"padded generate {name} x16"].append(await off_main(padded, loaded, ids, tokens))


def arrivals_bound(alone: float, tokens: int) -> float:
    """Tokens/s that 16 requests, one every `SPARSE_S`, allow at most: the last arrives at
    15 × `SPARSE_S` and then takes at least as long as one request at a time does (`alone`
    tokens/s, the c=1 row)."""
    return 16 * tokens / (15 * SPARSE_S + tokens / alone)


def report(figures: dict[str, list[float]], args: argparse.Namespace) -> None:
    median = {name: statistics.median(values) for name, values in figures.items()}
    print(
        f"\nSmolLM2-135M-Instruct (the default GGUF), {args.tokens} new tokens each, "
        f"{args.threads} threads, {args.rounds} rounds (median; every round in brackets), torch "
        f"{torch.__version__}\n"
    )
    print(f"| {'how':<34} | {'tokens/s':>8} | rounds |")
    print(f"|{'-' * 36}|{'-' * 10}|--------|")
    for name, values in figures.items():
        rounds = " ".join(f"{v:.1f}" for v in values)
        print(f"| {name:<34} | {median[name]:8.1f} | {rounds} |")
    print()
    print(f"| {'ratio':<44} | {'value':>6} | target |")
    print(f"|{'-' * 46}|{'-' * 8}|--------|")
    for name in args.weights:
        rows = [
            (
                "c=1 / llama-server c=1",
                median[f"muse {name} c=1"] / median["llama-server c=1"],
                1.0,
            ),
            (
                "16 together / llama-server 16 together",
                median[f"muse {name} 16 together"] / median["llama-server 16 together"],
                1.5,
            ),
            (
                f"16 staggered {OVERLAPPING_S} s / padded bound",
                median[f"muse {name} 16 staggered {OVERLAPPING_S} s"]
                / median[f"padded generate {name} x16"],
                0.8,
            ),
            (
                f"16 staggered {SPARSE_S} s / arrivals' bound",
                median[f"muse {name} 16 staggered {SPARSE_S} s"]
                / arrivals_bound(median[f"muse {name} c=1"], args.tokens),
                0.8,
            ),
        ]
        if args.big:
            rows += [
                ("1.7B-shaped c=1 (tokens/s)", median[f"1.7B-shaped {name} c=1"], 10.0),
                (
                    "1.7B-shaped 16 together (tokens/s)",
                    median[f"1.7B-shaped {name} 16 together"],
                    60.0,
                ),
            ]
        for what, value, target in rows:
            met = "met" if value >= target else "not met"
            print(f"| {name + ' ' + what:<44} | {value:6.2f} | ≥ {target:g} {met} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", nargs="+", default=["int4", "int8", "fp32"])
    parser.add_argument("--big", action="store_true", help="also the 1.7B-shaped model")
    parser.add_argument("--big-tokens", type=int, help="new tokens each there (default --tokens)")
    parser.add_argument("--quality", action="store_true", help="greedy text against fp32")
    parser.add_argument("--gguf", help="this GGUF file, both as servers (see above)")
    parser.add_argument("--memory", nargs="+", default=["auto"], help="with --gguf: MUSE_MEMORY")
    parsed = parser.parse_args()
    asyncio.run(gguf_main(parsed) if parsed.gguf else main(parsed))
