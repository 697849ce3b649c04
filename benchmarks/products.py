"""The CPU's matrix-product kernels for one decoding step's shapes: int8 and int4 weight-only
(`torch._weight_int8pack_mm`, `torch._weight_int4pack_mm_for_cpu`, bf16 activations), bf16 and
fp32 `linear`; and for many rows, int4 weights widened as they are multiplied (the C++
extension's `int4_rows`: on AMX, with AVX512-BF16, or with AVX512-VNNI on 16-bit inputs) against
torch's int4 kernel and the bf16 copy.

    .venv/bin/python benchmarks/products.py

Prints milliseconds per call for a few weight shapes (SmolLM2-135M's and -1.7B's layers and the
output head) at 1, 4 and 16 rows, on a thread of its own (never torch on the main thread, see
benchmarks/throughput.py). What `generation/model/quantize.py`'s choices rest on. Each call reuses
one weight, which may stay in the CPU's caches: a whole decoding step reads every layer's weights
once, so these are a kernel's best case, not its share of a step: the second table (every layer
of the default model with weights of its own) is.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generation.model import native_step  # noqa: E402
from generation.model.bf16_products import bf16_matmul, bf16_weights  # noqa: E402
from generation.model.native_build import NO_AMX  # noqa: E402
from generation.model.quantize import GROUP, Int4Linear, Int8Linear  # noqa: E402

# MUSE_INT4_ROWS: the way it gives
WAYS = {"1": "amx", "avx512": "avx512_bf16", "vnni": "avx512_vnni"}
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
    print(
        f"| {'weight (out x in)':<18} | rows | int4 pack_mm | int8 pack_mm | bf16 linear "
        "| fp32 linear |"
    )
    print(f"|{'-' * 20}|------|--------------|--------------|-------------|-------------|")
    for out_features, in_features in SHAPES:
        weight = torch.randn(out_features, in_features)
        scales = weight.abs().amax(dim=1) / 127
        quantised = torch.round(weight / scales[:, None]).to(torch.int8)
        scales16, weight16 = scales.to(torch.bfloat16), weight.to(torch.bfloat16)
        int4_layer = Int4Linear(torch.nn.Linear(in_features, out_features, bias=False))
        packed, scales_and_zeros = int4_layer.weight, int4_layer.scales_and_zeros
        for rows in ROWS:
            x = torch.randn(rows, in_features)
            x16 = x.to(torch.bfloat16)
            int4 = per_call_ms(
                torch._weight_int4pack_mm_for_cpu, x16, packed, GROUP, scales_and_zeros
            )
            int8 = per_call_ms(torch._weight_int8pack_mm, x16, quantised, scales16)
            bf16 = per_call_ms(F.linear, x16, weight16)
            fp32 = per_call_ms(F.linear, x, weight)
            shape = f"{out_features} x {in_features}"
            print(
                f"| {shape:<18} | {rows:4} | {int4:12.3f} | {int8:12.3f} | {bf16:11.3f} "
                f"| {fp32:11.3f} |"
            )


def whole_model() -> None:
    """Every layer of SmolLM2-135M once, each with weights of its own (as a decoding step reads
    them, so they cannot all stay in the caches), with the fused projections the engine uses:
    what one step's matrix products cost with int4 and with int8 weights."""
    torch.manual_seed(0)
    layer_shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30
    int4 = [Int4Linear(torch.nn.Linear(k, n, bias=False)) for n, k in layer_shapes]
    int8 = [Int8Linear(torch.nn.Linear(k, n, bias=False)) for n, k in layer_shapes]
    head = Int8Linear(torch.nn.Linear(576, 49152, bias=False))  # int8 in both, as the engine's
    print("\none pass over SmolLM2-135M's layers and head, ms (median of 10)\n")
    print("| rows | int4 layers | int8 layers |")
    print("|------|-------------|-------------|")
    for rows in ROWS:
        inputs = {k: torch.randn(rows, k).to(torch.bfloat16) for k in (576, 1536)}

        def run(layers: list, inputs: dict[int, torch.Tensor] = inputs) -> None:
            for layer in layers:
                if isinstance(layer, Int4Linear):
                    torch._weight_int4pack_mm_for_cpu(
                        inputs[layer.in_features], layer.weight, GROUP, layer.scales_and_zeros
                    )
                else:
                    x = inputs[layer.in_features]
                    torch._weight_int8pack_mm(x, layer.weight, layer.scales)

        times = {}
        for name, layers in (("int4", int4), ("int8", int8)):
            spans = [per_call_ms(run, [*layers, head], repeats=1) for _ in range(10)]
            times[name] = sorted(spans)[len(spans) // 2]
        print(f"| {rows:4} | {times['int4']:11.2f} | {times['int8']:11.2f} |")


def many_rows() -> None:
    """The 1.7B shape's projections for many rows: torch's int4 kernel, the extension's kernel
    in each way this CPU has, the bf16 copy."""
    extension = native_step.compiled()
    widening = extension.int4_rows if extension and extension.int4_rows_available() else None

    def widened(way: str, *args: torch.Tensor) -> float:
        """The kernel's `way` (`MUSE_INT4_ROWS`: `1` its best, `vnni` AVX512-VNNI, `avx512`
        AVX512-BF16), ms."""
        os.environ[NO_AMX] = way
        try:
            if widening is None or extension.int4_rows_kind() != WAYS[way]:
                return float("nan")
            return per_call_ms(widening, *args)
        finally:
            os.environ.pop(NO_AMX)

    torch.manual_seed(0)
    print("\nSmolLM2-1.7B's projections, many rows, ms per call (nan: not on this CPU)\n")
    print(
        "| weight (out x in) | rows | int4 kernel | widened, AMX | widened, AVX512-BF16 "
        "| int8 inputs, VNNI | bf16 |"
    )
    print(
        "|-------------------|------|-------------|--------------|----------------------"
        "|-------------------|------|"
    )
    for out_features, in_features in ((6144, 2048), (2048, 2048), (16384, 2048), (2048, 8192)):
        layer = Int4Linear(torch.nn.Linear(in_features, out_features, bias=False), wide=False)
        packed, scales = layer.weight, layer.scales_and_zeros
        wide = bf16_weights(layer.dequantised())
        for rows in (1, 4, 8, 16, 64, 256):
            x = torch.randn(rows, in_features).to(torch.bfloat16)
            int4 = per_call_ms(torch._weight_int4pack_mm_for_cpu, x, packed, GROUP, scales)
            amx, vector = widened("1", x, packed, scales), widened("avx512", x, packed, scales)
            vnni = widened("vnni", x, packed, scales)
            bf16 = per_call_ms(bf16_matmul, x, wide)
            shape = f"{out_features} x {in_features}"
            print(
                f"| {shape:<17} | {rows:4} | {int4:11.3f} | {amx:12.3f} | {vector:20.3f} "
                f"| {vnni:17.3f} | {bf16:4.2f} |"
            )


if __name__ == "__main__":
    worker = threading.Thread(target=lambda: (measure(), whole_model(), many_rows()))
    worker.start()
    worker.join()
