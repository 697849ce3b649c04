"""Quantised layers joined into one: the query/key/value projections, and the gate/up ones, of a
layer that the written-out step (`generation/model/llama_step.py`) multiplies in one kernel call
each, on the same input.

A served file (`generation/model/served_cache.py`) stores them joined already (`joined_entries`),
so loading maps the joined weights and each layer's are views of them (`split_entries`, then
`adopt`): no copy is made at load, and no page of the file is resident twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from generation.model.quantize import Int8Linear, QuantisedLinear

# A Llama layer's projections the step multiplies together: (block, joined name, parts).
GROUPS = (
    ("self_attn", "qkv_proj", ("q_proj", "k_proj", "v_proj")),
    ("mlp", "gate_up_proj", ("gate_proj", "up_proj")),
)

# Where `adopt` leaves a joined layer on its first part: in the part's `__dict__`, not as a
# submodule (the model's modules, state dict and adapters see the parts alone).
ADOPTED = "_joined_layer"


def fuse(layers: list[nn.Module]) -> nn.Module | None:
    """One quantised layer computing `layers`' outputs one after another (one kernel call for
    all, on the same input), or None unless they are all bias-free `Int8Linear`s or all
    `Int4Linear`s. The layers' packed weights become views into the fused one (no memory is
    added) and each output is the same number as the layer's own."""
    adopted = adopted_of(layers[0]) if layers else None
    if adopted is not None and adopted.parts == list(layers):
        return adopted
    kinds = {type(layer) for layer in layers}
    if (
        len(kinds) != 1
        or not issubclass(next(iter(kinds)), QuantisedLinear)
        or any(layer.bias is not None for layer in layers)
    ):
        return None
    if len({layer.in_features for layer in layers}) != 1:
        return None
    weight = torch.cat([layer.weight for layer in layers])
    if issubclass(kinds.pop(), Int8Linear):
        scales = torch.cat([layer.scales for layer in layers])
    else:  # the scales run along the middle dimension: views would not be contiguous
        scales = torch.cat([layer.scales_and_zeros for layer in layers], dim=1).contiguous()
    fused = _joined(layers, weight, scales)
    _share_rows(layers, "weight", fused.weight)
    if isinstance(fused, Int8Linear):
        _share_rows(layers, "scales", fused.scales)
    return fused


def adopt(layers: Sequence[nn.Module], weight: torch.Tensor, scales: torch.Tensor) -> nn.Module:
    """The joined layer of `layers` over their joined `weight` and `scales` as a file holds them
    (`split_entries`: the layers' weights are views of `weight` already); `fuse` returns it."""
    fused = _joined(list(layers), weight, scales)
    layers[0].__dict__[ADOPTED] = fused
    return fused


def adopted_of(layer: nn.Module) -> nn.Module | None:
    """The joined layer `adopt` built with `layer` as its first part, if any."""
    return layer.__dict__.get(ADOPTED)


def _joined(layers: list[nn.Module], weight: torch.Tensor, scales: torch.Tensor) -> nn.Module:
    fused = nn.Module.__new__(type(layers[0]))
    nn.Module.__init__(fused)
    fused.in_features = layers[0].in_features
    fused.out_features = sum(layer.out_features for layer in layers)
    fused.bias = None
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if isinstance(fused, Int8Linear):
        fused.kernel_only = False
        fused.register_buffer("scales", scales)
    else:
        fused.register_buffer("scales_and_zeros", scales)
    # An int8 model has no bf16 weights but its head's; an int4 model's stay each layer's own
    # (laid out for oneDNN, they cannot be views): a call of many rows multiplies with each
    # layer's (`parts`).
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


def joined_entries(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A served file's tensors with each layer's `GROUPS` stored joined: `BLOCK.JOINED.weight`
    (the parts' packed weights one after another) and its scales, in place of the parts'
    weights. The parts' int8 scales are views of the joined ones and go too; int4 scales run
    along the middle dimension, so each part keeps its own for calls of the part alone (a
    prompt's layers, an adapter's). Groups whose parts differ in kind or width, or have a bias,
    are left as they are."""
    out = dict(tensors)
    for name in tensors:
        for block, joined, parts in GROUPS:
            suffix = f".{block}.{parts[0]}.weight"
            if not name.endswith(suffix):
                continue
            prefix = name.removesuffix(f".{parts[0]}.weight")
            names = [f"{prefix}.{part}" for part in parts]
            kind = _kind(tensors, names)
            if kind is None:
                continue
            out[f"{prefix}.{joined}.weight"] = torch.cat([out.pop(f"{n}.weight") for n in names])
            if kind == "scales":
                scales = [out.pop(f"{n}.scales") for n in names]
                out[f"{prefix}.{joined}.scales"] = torch.cat(scales)
            else:
                every = [tensors[f"{n}.scales_and_zeros"] for n in names]
                out[f"{prefix}.{joined}.scales_and_zeros"] = torch.cat(every, dim=1).contiguous()
    return out


def _kind(tensors: dict[str, torch.Tensor], names: list[str]) -> str | None:
    """`scales` (int8) or `scales_and_zeros` (int4) if every part of a group is a bias-free
    layer of that kind with the same input width; None otherwise."""
    for kind in ("scales", "scales_and_zeros"):
        if all(f"{n}.weight" in tensors and f"{n}.{kind}" in tensors for n in names):
            widths = {tensors[f"{n}.weight"].shape[1] for n in names}
            if len(widths) == 1 and not any(f"{n}.bias" in tensors for n in names):
                return kind
    return None


def split_entries(
    tensors: dict[str, torch.Tensor], sizes: dict[str, int]
) -> list[tuple[list[str], torch.Tensor, torch.Tensor]]:
    """Undo `joined_entries` in `tensors` (a served file's, mapped) with views: each part's
    `weight` (and int8 `scales`) becomes its rows of the joined tensor. `sizes`: each linear
    layer's output rows, by name. Returns each group's parts with its joined weight and scales
    (for `adopt`, once the layers are built)."""
    groups = []
    for name in list(tensors):
        for block, joined, parts in GROUPS:
            suffix = f".{block}.{joined}.weight"
            if not name.endswith(suffix):
                continue
            prefix = name.removesuffix(f".{joined}.weight")
            weight = tensors.pop(name)
            int8 = f"{prefix}.{joined}.scales" in tensors
            scales = tensors.pop(f"{prefix}.{joined}.{'scales' if int8 else 'scales_and_zeros'}")
            names = [f"{prefix}.{part}" for part in parts]
            first = 0
            for part in names:
                rows = slice(first, first + sizes[part])
                tensors[f"{part}.weight"] = weight[rows]
                if int8:
                    tensors[f"{part}.scales"] = scales[rows]
                first = rows.stop
            if first != weight.shape[0]:
                raise ValueError(f"{name}: {weight.shape[0]} rows where its parts have {first}")
            groups.append((names, weight, scales))
    return groups
