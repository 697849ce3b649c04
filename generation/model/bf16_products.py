"""bf16 matrix products on the CPU's bf16 units: weights laid out once for oneDNN, and a
prefill's products in tiles of a fixed number of rows.

A quantised layer (`generation/model/quantize.py`) multiplies many rows this way instead of
with its int kernel (`generation/model/prefill_mode.py` says when).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from generation.model.prefill_mode import in_prefill

COMPUTE = torch.bfloat16
# A prefill's bf16 products go in tiles of exactly this many rows (the last one padded with
# zeros): oneDNN picks its kernel by the number of rows (some row counts round otherwise than
# others), so a token's numbers would move with how many tokens share its forward, and a prompt
# whose beginning the prefix cache remembered (only the rest is computed) would decode otherwise
# than the same prompt computed whole: the same seed would not give the same text. 64 rows
# round here as a whole prompt's product did before tiles. The padding and the smaller calls
# make a prefill somewhat slower (`benchmarks/README.md`, "Decisions"); decoding steps are as
# before.
PREFILL_TILE = 64


def bf16_weights(weight: torch.Tensor) -> torch.Tensor:
    """bf16 `weight` [out, in] laid out once for oneDNN's matrix product (`bf16_matmul`), or as
    it is where oneDNN cannot take it. `F.linear` lays the weights out again on every call,
    which costs more than the product saves (`benchmarks/README.md`, "Kernels")."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return weight
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, 16)
    except RuntimeError:  # a build or CPU without oneDNN's bf16 product
        return weight


def plain_weights(weight: torch.Tensor) -> torch.Tensor:
    """`bf16_weights`' weights as an ordinary tensor again."""
    return weight.to_dense() if weight.is_mkldnn else weight


def bf16_matmul(flat: torch.Tensor, weight: torch.Tensor, cast: bool = True) -> torch.Tensor:
    """`flat` [rows, in] times bf16 `weight` from `bf16_weights`, in `flat`'s dtype (in bf16 if
    not `cast`)."""
    x = flat.to(COMPUTE)
    product = partial(_bf16_product, weight=weight)
    out = in_tiles(product, x) if in_prefill() else product(x)
    return out.to(flat.dtype) if cast else out


def _bf16_product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
    return F.linear(x, weight)


def in_tiles(product: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """`product(x)` for `x` [rows, in], computed `PREFILL_TILE` rows at a time (the last tile
    padded), so each row's result is the same whatever the number of rows."""
    rows = x.shape[0]
    if rows == PREFILL_TILE:
        return product(x)
    padded = F.pad(x, (0, 0, 0, -rows % PREFILL_TILE))
    return torch.cat([product(tile) for tile in padded.split(PREFILL_TILE)])[:rows]
