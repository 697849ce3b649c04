"""The C++ extension's product of many rows with int4 weights that have no bf16 copy
(`generation/model/native/int4_rows.cpp`: on AMX, with AVX512-VNNI or with AVX512-BF16), for the
products outside the C++ step: a prefill's forward and the Python step.

It is this process's once the extension is loaded (`native_step.build`, which a quantised
model's batch runner asks for before its first prefill), and only where the CPU has the kernel;
until then, and elsewhere, `int4_kernel()` is None and such products keep torch's int4 kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch

Int4Product = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_kernel: Int4Product | None = None


def install(extension: ModuleType) -> None:
    """Take `extension`'s kernel where this CPU runs it."""
    global _kernel
    _kernel = extension.int4_rows if extension.int4_rows_available() else None


def int4_kernel() -> Int4Product | None:
    """bf16 rows [rows, in], packed int4 weights and their scales and zeros (`Int4Linear`'s) →
    bf16 [rows, out]; None where there is none."""
    return _kernel
