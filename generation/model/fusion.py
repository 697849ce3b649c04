"""Quantised layers joined into one: the query/key/value projections, and the gate/up ones, of a
layer that the written-out step (`generation/model/llama_step.py`) multiplies in one kernel call
each, on the same input.
"""

from __future__ import annotations

import torch
from torch import nn

from generation.model.quantize import Int8Linear, QuantisedLinear


def fuse(layers: list[nn.Module]) -> nn.Module | None:
    """One quantised layer computing `layers`' outputs one after another (one kernel call for
    all, on the same input), or None unless they are all bias-free `Int8Linear`s or all
    `Int4Linear`s. The layers' packed weights become views into the fused one (no memory is
    added) and each output is the same number as the layer's own."""
    kinds = {type(layer) for layer in layers}
    if (
        len(kinds) != 1
        or not issubclass(next(iter(kinds)), QuantisedLinear)
        or any(layer.bias is not None for layer in layers)
    ):
        return None
    if len({layer.in_features for layer in layers}) != 1:
        return None
    fused = nn.Module.__new__(kinds.pop())
    nn.Module.__init__(fused)
    fused.in_features = layers[0].in_features
    fused.out_features = sum(layer.out_features for layer in layers)
    fused.bias = None
    fused.weight = nn.Parameter(torch.cat([layer.weight for layer in layers]), requires_grad=False)
    _share_rows(layers, "weight", fused.weight)
    if isinstance(fused, Int8Linear):
        fused.kernel_only = False
        fused.wide = None  # only an int4 model's head has bf16 weights
        fused.register_buffer("scales", torch.cat([layer.scales for layer in layers]))
        _share_rows(layers, "scales", fused.scales)
    else:  # the scales run along the middle dimension: views would not be contiguous
        parts = [layer.scales_and_zeros for layer in layers]
        fused.register_buffer("scales_and_zeros", torch.cat(parts, dim=1).contiguous())
        # The bf16 weights stay the layers' own (laid out for oneDNN, they cannot be views): a
        # call of many rows multiplies with each layer's (`parts`).
        fused.wide = None
    fused.parts = list(layers)
    return fused


def _share_rows(layers: list[nn.Module], name: str, whole: torch.Tensor) -> None:
    """Each layer's `name` becomes the view of its own output rows in `whole`."""
    first = 0
    for layer in layers:
        rows = whole.detach()[first : first + layer.out_features]
        setattr(layer, name, nn.Parameter(rows, requires_grad=False) if name == "weight" else rows)
        first += layer.out_features
