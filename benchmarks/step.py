"""One decoding step of the default model: through transformers' forward, the written-out step
(`generation/model/llama_step.py`) and the step as `BatchRunner.step` serves it (int4 weights, and
fewer than 10 rows of int8: the C++ step, `generation/model/native_step.py`), and a prefill, for
each kind of weights (CPU).

    .venv/bin/python benchmarks/step.py [--weights int4 int8 fp32] [--rows 1 16] [--rounds 8]
                                        [--big]

Prints the median and the fastest of `--rounds` rounds of 20 steps each (the ways
alternating, so the machine's drift hits each), milliseconds per step, and the prefill of one
and of sixteen benchmark prompts (median of three); `--big`: the SmolLM2-1.7B-shaped model with
random weights of `benchmarks/peers.py` instead of the default model. Runs on a thread of its
own (never torch on the main thread, see benchmarks/throughput.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.peers import big_model  # noqa: E402
from benchmarks.throughput import prompt  # noqa: E402
from generation.model.agreement import python_step  # noqa: E402
from generation.model.batch_runner import BatchRunner, KVBatch  # noqa: E402
from generation.model.loading import default_cache_dir, load_model  # noqa: E402
from generation.model.prompting import encode_messages  # noqa: E402

STEPS = 20


def through_transformers(runner: BatchRunner) -> Callable[[KVBatch, list[int]], torch.Tensor]:
    """A decoding step through the model's own forward (what `BatchRunner.step` did before)."""

    @torch.inference_mode()
    def step(batch: KVBatch, tokens: list[int]) -> torch.Tensor:
        ids = torch.tensor(tokens).unsqueeze(1)
        mask = F.pad(batch.mask, (0, 1), value=1)
        positions = batch.lengths.unsqueeze(1)
        logits = runner._forward(ids, mask, positions, batch.cache, batch.slots)
        batch.mask, batch.lengths = mask, batch.lengths + 1
        return logits

    return step


def in_python(runner: BatchRunner) -> Callable[[KVBatch, list[int]], torch.Tensor]:
    """`runner.step` with the C++ step set aside (generation/model/native_step.py)."""

    def step(batch: KVBatch, tokens: list[int]) -> torch.Tensor:
        with python_step(runner):
            return runner.step(batch, tokens)

    return step


def step_ms(runner: BatchRunner, step: Callable, ids: list[int], rows: int) -> float:
    batch, _ = runner.prefill([ids] * rows)
    for _ in range(3):
        step(batch, [1] * rows)
    started = time.perf_counter()
    for _ in range(STEPS):
        step(batch, [1] * rows)
    return (time.perf_counter() - started) / STEPS * 1000


def measure(args: argparse.Namespace) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms\n")
    print("| weights | rows | transformers' forward | written-out step | as served |")
    print("|---|---|---|---|---|")
    prefills = []
    cache = default_cache_dir()
    for weights in args.weights:
        loaded = big_model(weights) if args.big else load_model(None, "cpu", cache, weights)
        runner = BatchRunner(loaded.model, loaded.tokenizer.pad_token_id or 0)
        prompts = [encode_messages(loaded.tokenizer, prompt(i), 4096) for i in range(16)]
        ways = {
            "transformers": through_transformers(runner),
            "written out": in_python(runner),
            "served": runner.step,  # int weights: the C++ step, if built
        }
        for rows in args.rows:
            times: dict[str, list[float]] = {name: [] for name in ways}
            for _ in range(args.rounds):
                for name, step in ways.items():
                    times[name].append(step_ms(runner, step, prompts[0], rows))
            cells = [f"{statistics.median(t):.2f} (fastest {min(t):.2f})" for t in times.values()]
            print(f"| {weights} | {rows} | {' | '.join(cells)} |")
        for count in (1, 16):
            spans = []
            for _ in range(3):
                started = time.perf_counter()
                runner.prefill(prompts[:count])
                spans.append((time.perf_counter() - started) * 1000)
            prefills.append((weights, count, statistics.median(spans)))
    print()
    for weights, count, ms in prefills:
        print(f"prefill of {count} prompt(s), {weights}: {ms:.0f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", nargs="+", default=["int4", "int8", "fp32"])
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--big", action="store_true", help="the 1.7B-shaped model instead")
    worker = threading.Thread(target=measure, args=(parser.parse_args(),))
    worker.start()
    worker.join()
