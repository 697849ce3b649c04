"""The CPU's matrix-product kernels for one decoding step's shapes: int8 weight-only
(`torch._weight_int8pack_mm`, bf16 activations), bf16 and fp32 `linear`.

    .venv/bin/python benchmarks/kernels.py

Prints milliseconds per call for a few weight shapes (SmolLM2-135M's and -1.7B's layers and the
output head) at 1, 4 and 16 rows, on a thread of its own (never torch on the main thread, see
benchmarks/throughput.py). What `generation/quantize.py`'s choices rest on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

SHAPES = [(49152, 576), (1536, 576), (576, 1536), (2048, 2048), (8192, 2048), (2048, 8192)]
ROWS = (1, 4, 16)


def per_call_ms(work: Callable[..., object], *args: object, repeats: int = 10) -> float:
    work(*args)
    work(*args)
    started = time.perf_counter()
    for _ in range(repeats):
        work(*args)
    return (time.perf_counter() - started) / repeats * 1000


def measure() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per call\n")
    print(f"| {'weight (out x in)':<18} | rows | int8 pack_mm | bf16 linear | fp32 linear |")
    print(f"|{'-' * 20}|------|--------------|-------------|-------------|")
    for out_features, in_features in SHAPES:
        weight = torch.randn(out_features, in_features)
        scales = weight.abs().amax(dim=1) / 127
        quantised = torch.round(weight / scales[:, None]).to(torch.int8)
        scales16, weight16 = scales.to(torch.bfloat16), weight.to(torch.bfloat16)
        for rows in ROWS:
            x = torch.randn(rows, in_features)
            x16 = x.to(torch.bfloat16)
            int8 = per_call_ms(torch._weight_int8pack_mm, x16, quantised, scales16)
            bf16 = per_call_ms(F.linear, x16, weight16)
            fp32 = per_call_ms(F.linear, x, weight)
            shape = f"{out_features} x {in_features}"
            print(f"| {shape:<18} | {rows:4} | {int8:12.3f} | {bf16:11.3f} | {fp32:11.3f} |")


if __name__ == "__main__":
    worker = threading.Thread(target=measure)
    worker.start()
    worker.join()
