"""The child process that builds the C++ step and runs it once before the serving process loads
it (`generation/model/native_build.py`): `python -m generation.model.native_smoke FOLDER`. A build
for another CPU dies here (SIGILL) instead of in the server; a wrong one fails the comparison."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import ModuleType

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from generation.model.batch_runner import BatchRunner
from generation.model.bf16_products import bf16_matmul, bf16_weights
from generation.model.native_build import (
    FAULT,
    NO_AMX,
    SMOKE_FILE,
    WITHOUT_AMX,
    load_extension,
    make_folder,
    smoke_record,
)
from generation.model.native_step import NativeQuantisedStep
from generation.model.prefill_mode import WIDE_ROWS
from generation.model.quantize import Int4Linear, quantise


def tiny_int4_model() -> LlamaForCausalLM:
    """A tiny random Llama with int4 weights and no bf16 copy: steps of many rows take the int4
    kernel for many rows where the CPU has it (AMX, which some virtual machines announce and
    then fault on)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config).eval()
    quantise(model, 4, wide=False)
    return model


def smoke(extension: ModuleType) -> None:
    """Prefills and two decoding steps of a tiny random int4 Llama through `extension`, of one
    row and of many, checked against the Python step (a wrong build gives nonsense, a build for
    another CPU faults)."""
    runner = BatchRunner(tiny_int4_model(), 0)
    step = runner._decode
    if step is None:
        raise RuntimeError("the smoke model has no written-out step")
    step.native = NativeQuantisedStep.of(step, extension)
    if step.native is None:
        raise RuntimeError("the built step does not serve the smoke model")
    native = step.native
    for rows in (1, WIDE_ROWS + 2):
        prompts = [[1 + row, 5, 9, 13, 17] for row in range(rows)]
        ours, theirs = runner.prefill(prompts)[0], runner.prefill(prompts)[0]
        for token in (3, 7):
            got = runner.step(ours, [token] * rows)
            step.native = None  # the Python step, for comparison
            want = runner.step(theirs, [token] * rows)
            step.native = native
            if not bool(torch.isfinite(got).all()) or float((got - want).abs().max()) > 1.0:
                raise RuntimeError("the built step does not compute what the Python step does")


# The many-rows kernel's ways other than AMX's (faster than the copy wherever it runs), with the
# MUSE_INT4_ROWS that asks for each.
RACED = {"avx512_vnni": "vnni", "avx512_bf16": "avx512"}
RACE_ROWS = 16  # sixteen requests decoding together


def race(extension: ModuleType) -> dict[str, list[float]]:
    """For each of `RACED` this CPU has: ms for `RACE_ROWS` rows through four int4 layers with
    it and with their bf16 copy, the best of five rounds (`memory.widens_int4` keeps the copy
    only where it wins). Four layers of 2048 -> 4096, so that the copy's 64 MiB come from memory
    as a step's weights do."""
    torch.manual_seed(0)
    layers = [Int4Linear(nn.Linear(2048, 4096, bias=False), wide=False) for _ in range(4)]
    copies = [bf16_weights(layer.dequantised()) for layer in layers]
    x = torch.randn(RACE_ROWS, 2048).to(torch.bfloat16)

    def best_ms(work: object) -> float:
        rounds = []
        for _ in range(5):
            started = time.perf_counter()
            work()  # type: ignore[operator]
            rounds.append((time.perf_counter() - started) * 1000)
        return min(rounds)

    def kernel() -> None:
        for layer in layers:
            extension.int4_rows(x, layer.weight, layer.scales_and_zeros)

    def copy() -> None:
        for weight in copies:
            bf16_matmul(x, weight)

    measured: dict[str, list[float]] = {}
    before = os.environ.get(NO_AMX)
    try:
        for kind, setting in RACED.items():
            if before == "0":
                break  # the kernel is off in this run
            os.environ[NO_AMX] = setting
            if extension.int4_rows_kind() == kind:
                measured[kind] = [best_ms(kernel), best_ms(copy)]
    finally:
        if before is None:
            os.environ.pop(NO_AMX, None)
        else:
            os.environ[NO_AMX] = before
    return measured


def main(folder: Path) -> int:
    """The child: build in `folder`, run the step once, write down that it passed."""
    make_folder(folder)
    extension = load_extension(folder)
    fault = os.environ.get(FAULT, "")
    if fault:
        os.kill(os.getpid(), {"sigill": signal.SIGILL, "segv": signal.SIGSEGV}[fault])
    smoke(extension)
    amx = os.environ.get(NO_AMX) != WITHOUT_AMX  # a run again without AMX says so
    record = {**smoke_record(folder), "amx": amx, "many_rows": race(extension)}
    (folder / SMOKE_FILE).write_text(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
