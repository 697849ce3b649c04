"""`muse serve` on a GPU: streams through the engine's own process while the client's event
loop is kept busy, against the padded `generate` bound of the same model (the engine-process
target: ≥ 0.9 of the bound at 16 and 64 streams; in-process it reached 0.31–0.44).

    python benchmarks/gpu_serve.py --tokenizer DIR                    # on a CUDA machine
    python benchmarks/gpu_serve.py --tokenizer DIR --device cpu --shapes tiny --streams 4 --tokens 8

For each shape (random weights, generation/model/random_model.py, saved to a temporary folder
with the real tokenizer so `muse serve` loads it as any local model): the padded bound is
measured in this process first (then the model is freed), `muse serve` is started as a child as
`MUSE_ENGINE_PROCESS=1` does, and `--streams` streams of `--tokens` tokens (EOS ignored) go
through the OpenAI backend while a task on the same event loop burns half of its time in
Python, as a busy bot would. Prints tokens/s, the ratio and the loop's p99 lag.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.throughput import (  # noqa: E402
    LoopLag,
    engine_concurrency,
    off_main,
    padded,
    prompt,
)
from bot.cli.engine_process import engine_process  # noqa: E402
from bot.core.settings import Settings  # noqa: E402
from generation.model.prompting import encode_messages  # noqa: E402
from generation.model.random_model import random_model  # noqa: E402


async def busy_loop(share: float = 0.5, slice_s: float = 0.005) -> None:
    """Keep the event loop busy `share` of the time in pure Python (a bot with work to do)."""
    while True:
        until = time.perf_counter() + slice_s
        while time.perf_counter() < until:
            pass
        await asyncio.sleep(slice_s * (1 - share) / share)


def saved_model(shape: str, tokenizer_dir: str, device: str, folder: Path) -> list[list[int]]:
    """Save a random `shape` model (bf16 on `device` when it is a GPU) with the tokenizer to
    `folder`; the prompts' ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    loaded = random_model(shape, tokenizer, device, dtype)
    loaded.model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return [encode_messages(tokenizer, prompt(i), 4096) for i in range(64)]


def bound(folder: Path, device: str, ids: list[list[int]], tokens: int) -> float:
    """The padded `generate` bound for `ids`, in this process, the model freed afterwards."""
    from generation.model.loading import load_model

    loaded = load_model(str(folder), device, weights="auto")  # what `muse serve` runs
    padded(loaded, ids[:2], 4)  # warm up kernels
    figure = max(padded(loaded, ids, tokens) for _ in range(2))
    del loaded
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return figure


async def shape_rows(args: argparse.Namespace, shape: str) -> list[tuple[str, float, float]]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / shape
        ids = await off_main(saved_model, shape, args.tokenizer, args.device, folder)
        bounds = {
            n: await off_main(bound, folder, args.device, ids[:n], args.tokens)
            for n in args.streams
        }
        settings = Settings(
            model=str(folder),
            device=args.device,
            max_batch=max(args.streams),
            queue_size=2 * max(args.streams),
            max_tokens=max(512, args.tokens),
            timeout_s=600.0,
        )
        async with engine_process(settings) as served:
            await engine_concurrency(served, 2, 2, 4)  # type: ignore[arg-type]
            lag = LoopLag()
            load = asyncio.create_task(busy_loop())
            try:
                with lag:
                    for n in args.streams:
                        rate = await engine_concurrency(served, n, n, args.tokens)  # type: ignore[arg-type]
                        rows.append((f"{shape} {n} streams", rate, bounds[n]))
            finally:
                load.cancel()
        print(f"{shape}: client loop lag p99 {lag.p99():.1f} ms (busy half the time)", flush=True)
    return rows


async def main(args: argparse.Namespace) -> None:
    print(f"torch {torch.__version__} on {args.device}", flush=True)
    rows = []
    for shape in args.shapes.split(","):
        rows += await shape_rows(args, shape)
    print(f"\n| {'how':<28} | muse serve tokens/s | padded bound | ratio | target |")
    print(f"|{'-' * 30}|---------------------|--------------|-------|--------|")
    for name, rate, limit in rows:
        print(f"| {name:<28} | {rate:19.1f} | {limit:12.1f} | {rate / limit:5.2f} | ≥ 0.9  |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="folder with the SmolLM2 tokenizer")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shapes", default="smollm2-135m,llama3-8b-body")
    parser.add_argument("--streams", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--tokens", type=int, default=64)
    asyncio.run(main(parser.parse_args()))
