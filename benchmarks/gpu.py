"""Muse's engine on a GPU: bf16 step-level batching against the same baselines as
benchmarks/throughput.py, how far bf16 batching drifts from a row alone, and the batch size
adapting to a real CUDA out-of-memory.

    python benchmarks/gpu.py --tokenizer DIR                      # on a CUDA machine
    python benchmarks/gpu.py --tokenizer DIR --device cpu --shapes tiny --tokens 8   # the script

The GPU machine gets neither downloads nor the default GGUF (too big to carry), so the models
have random weights in real models' shapes (generation/model/random_model.py) and the real
SmolLM2 tokenizer (DIR: a folder with tokenizer.json, e.g. the converted model's cache folder).
Every request generates exactly `--tokens` tokens (EOS ignored), as in throughput.py, so random
weights measure the same work as trained ones. Not a test: prints tables.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.throughput import (  # noqa: E402
    LoopLag,
    engine_concurrency,
    engine_run,
    naive,
    padded,
    prompt,
)
from generation.engine.local_engine import Engine, EngineConfig  # noqa: E402
from generation.model.batch_runner import BatchRunner  # noqa: E402
from generation.model.loading import LoadedModel  # noqa: E402
from generation.model.prompting import encode_messages  # noqa: E402
from generation.model.random_model import parameters, random_model  # noqa: E402
from generation.types import GenerationRequest, Message  # noqa: E402


async def throughput(loaded: LoadedModel, tokens: int, naive16: bool) -> dict[str, float]:
    """tokens/s of each way of serving, as in throughput.py, plus 64 requests at once."""
    ids = [encode_messages(loaded.tokenizer, prompt(i), 4096) for i in range(64)]
    padded(loaded, ids[:2], 4)  # warm up kernels
    figures: dict[str, float] = {"naive c=1": await naive(loaded, ids[:4], 1, tokens)}
    if naive16:
        figures["naive c=16"] = await naive(loaded, ids[:16], 16, tokens)
    engine = Engine(lambda: loaded, EngineConfig(max_batch=64, queue_size=128)).start()
    await engine.wait_ready()
    await engine_run(engine, 2, 4)  # warm up
    lag = LoopLag()
    with lag:
        figures["engine c=1"] = await engine_concurrency(engine, 4, 1, tokens)
    for n in (16, 64):
        # The bound right before and after the engine's run, best of two (as throughput.py).
        bounds = [padded(loaded, ids[:n], tokens)]
        with lag:
            figures[f"engine {n} together"] = await engine_run(engine, n, tokens)
        bounds.append(padded(loaded, ids[:n], tokens))
        figures[f"padded generate x{n}"] = max(bounds)
    with lag:
        figures["engine 16 staggered 0.5 s"] = await engine_run(engine, 16, tokens, 0.5)
    await engine.aclose()
    figures["event-loop lag p99 ms"] = lag.p99()
    return figures


def join_drift(loaded: LoadedModel, steps: int = 16) -> tuple[float, float]:
    """A row decoded alone, and again with a longer row joining after 3 steps (teacher-forced
    on its own tokens): the largest logit difference and the share of steps whose best token
    agrees. fp32 keeps both within 1e-3 (tests/generation/engine/test_batching.py); bf16 cannot."""
    tok, runner = loaded.tokenizer, BatchRunner(loaded.model, loaded.tokenizer.pad_token_id or 0)
    mine = encode_messages(tok, (Message("user", "Describe a quiet harbour town."),), 4096)
    other = encode_messages(tok, (Message("user", "A much longer prompt. " * 20),), 4096)
    batch, logits = runner.prefill([mine])
    alone, fed = [], []
    for _ in range(steps):
        alone.append(logits[0])
        fed.append(int(logits[0].argmax()))
        logits = runner.step(batch, [fed[-1]])
    batch, logits = runner.prefill([mine])
    together, other_next = [logits[0]], None
    for step in range(steps - 1):
        tokens = [fed[step]] + ([other_next] if other_next is not None else [])
        logits = runner.step(batch, tokens)
        if step == 2:
            joined, joined_logits = runner.prefill([other])
            batch = batch.merge(joined)
            logits = torch.cat([logits, joined_logits])
        together.append(logits[0])
        other_next = int(logits[1].argmax()) if logits.shape[0] > 1 else None
    drift = max(float((a - b).abs().max()) for a, b in zip(alone, together, strict=True))
    agree = sum(int(a.argmax()) == int(b.argmax()) for a, b in zip(alone, together, strict=True))
    return drift, agree / steps


async def switch_intervals(loaded: LoadedModel, tokens: int) -> list[tuple[float, float]]:
    """Engine 16 together at several GIL switch intervals (the engine picks
    ACCELERATOR_SWITCH_INTERVAL_S on a GPU): how much the GIL hand-off costs the worker."""
    engine = Engine(lambda: loaded, EngineConfig(max_batch=16, queue_size=64)).start()
    await engine.wait_ready()
    chosen = sys.getswitchinterval()
    rows = []
    for interval in (0.005, 0.001, 0.0005, 0.0002):
        sys.setswitchinterval(interval)
        rows.append((interval, await engine_run(engine, 16, tokens)))
    sys.setswitchinterval(chosen)
    await engine.aclose()
    return rows


class _OutOfMemoryCount(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "out of memory" in record.getMessage():
            self.events.append(record.getMessage())


async def out_of_memory(
    loaded: LoadedModel, headroom_gib: float, prompt_words: int, n: int, tokens: int
) -> list[tuple[str, str]]:
    """Cap this process's GPU memory a little above the weights, send `n` long prompts at
    once, and report how the engine shrank its batch and whether every request finished."""
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    limit = torch.cuda.memory_allocated() + headroom_gib * 2**30
    torch.cuda.set_per_process_memory_fraction(limit / total)
    counter = _OutOfMemoryCount()
    logging.getLogger("muse.generation.engine").addHandler(counter)
    engine = Engine(lambda: loaded, EngineConfig(max_batch=16, queue_size=64)).start()
    await engine.wait_ready()
    text = " ".join(f"word{i % 97}" for i in range(prompt_words))
    requests = [
        GenerationRequest(
            messages=(Message("user", f"{i}: {text}"),),
            max_new_tokens=tokens,
            ignore_eos=True,
            seed=i,
            timeout_s=600,
        )
        for i in range(n)
    ]
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(engine.generate(r) for r in requests), return_exceptions=True)
    wall = time.perf_counter() - started
    await engine.aclose()
    torch.cuda.set_per_process_memory_fraction(1.0)
    logging.getLogger("muse.generation.engine").removeHandler(counter)
    finished = [o for o in outcomes if not isinstance(o, BaseException)]
    failed = [repr(o)[:120] for o in outcomes if isinstance(o, BaseException)]
    prompt_len = len(encode_messages(loaded.tokenizer, requests[0].messages, 8192))
    return [
        ("memory cap", f"weights + {headroom_gib:g} GiB ({limit / 2**30:.1f} GiB)"),
        ("requests", f"{n} at once, prompts of {prompt_len} tokens, {tokens} new tokens each"),
        ("out-of-memory events", f"{len(counter.events)}: " + " | ".join(counter.events)),
        ("batch cap after", str(engine._batch_cap)),
        ("largest batch decoded", str(engine.max_rows_seen)),
        ("finished with all tokens", f"{sum(r.tokens_out == tokens for r in finished)}/{n}"),
        ("failed", f"{len(failed)} {failed[:2]}"),
        ("wall", f"{wall:.1f} s"),
    ]


def print_figures(name: str, figures: dict[str, float]) -> None:
    print(f"\n| {name:<28} | {'tokens/s':>9} |")
    print(f"|{'-' * 30}|{'-' * 11}|")
    for how, value in figures.items():
        if how.endswith("ms"):
            continue
        print(f"| {how:<28} | {value:9.1f} |")
    ratios = [
        ("engine 16 together / padded bound", "engine 16 together", "padded generate x16"),
        ("engine 64 together / padded bound", "engine 64 together", "padded generate x64"),
        ("engine staggered / padded x16", "engine 16 staggered 0.5 s", "padded generate x16"),
        ("engine c=1 / naive c=1", "engine c=1", "naive c=1"),
        ("engine 16 together / naive c=16", "engine 16 together", "naive c=16"),
        ("engine 16 together / naive c=1", "engine 16 together", "naive c=1"),
    ]
    for label, top, bottom in ratios:
        if top in figures and bottom in figures:
            print(f"  {label:<36} {figures[top] / figures[bottom]:6.2f}")
    print(f"  event-loop lag p99: {figures['event-loop lag p99 ms']:.1f} ms")


async def main(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    for shape in args.shapes.split(","):
        loaded = random_model(shape, tokenizer, device, dtype)
        head = f"{shape}: {parameters(loaded) / 1e6:,.0f}M parameters, {dtype}"
        print(f"\n## {head}, built in {loaded.load_s:.1f} s", flush=True)
        drift, agree = join_drift(loaded)
        print(f"row joined after 3 steps vs alone: max |Δlogit| {drift:.3g}, same best {agree:.0%}")
        figures = await throughput(loaded, args.tokens, naive16=shape == args.naive16)
        print_figures(f"{shape}, {args.tokens} new tokens", figures)
        if shape == args.switch_shape:
            print(f"\nGIL switch interval vs engine 16 together ({shape}):")
            for interval, rate in await switch_intervals(loaded, args.tokens):
                print(f"  {interval * 1e3:4.1f} ms  {rate:7.1f} tokens/s")
        if shape == args.oom_shape and device.type == "cuda":
            print(f"\nout-of-memory adaptation ({shape}):")
            rows = await out_of_memory(loaded, args.oom_headroom_gib, 1200, 16, 32)
            for key, value in rows:
                print(f"  {key}: {value}")
        del loaded
        if device.type == "cuda":
            torch.cuda.empty_cache()
        sys.stdout.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="folder with the SmolLM2 tokenizer")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shapes", default="smollm2-135m,smollm2-1.7b,llama3-8b-body")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--naive16", default="smollm2-135m", help="shape that also runs naive c=16")
    parser.add_argument("--switch-shape", default="smollm2-135m")
    parser.add_argument("--oom-shape", default="smollm2-1.7b")
    parser.add_argument("--oom-headroom-gib", type=float, default=3.0)
    asyncio.run(main(parser.parse_args()))
