"""Weight-only int8 and int4 linear layers for the CPU engine (`MUSE_WEIGHTS=int8` / `int4`).

A decoding step of a small model on the CPU is bound by reading the weights: fp32 reads 4 bytes
per parameter each step, int8 one, int4 half of one. torch's own kernels
(`_weight_int8pack_mm`: one scale per output row; `_weight_int4pack_mm_for_cpu`: a scale and a
zero per 32 inputs of each row) multiply bf16 activations by those weights (with fp32
activations they are many times slower), so each layer takes its input to bf16 and gives its
output back in the model's dtype: the rest of the model (norms, attention, the residual stream,
the cache) stays as it was, fp32 on the CPU. That costs nothing against running all of it in
bf16 (`benchmarks/README.md`), and the drift from fp32 is the weights' rounding alone.

int4 in groups of 32 with a scale and a minimum is how a Q4_0 / Q4_1 GGUF holds its weights, so
for such a file (the default model) the groups found again from its de-quantised weights are the
file's own: little is lost beyond rounding each group's scale and zero to bf16. The output head
stays int8 (the GGUF keeps it 8-bit too).

Many rows multiply with bf16 weights instead of the int kernels (a prefill's forward; with int4
also a decoding step of `WIDE_ROWS` rows or more): int8 widened for the call, exactly (bf16
holds every int8, the scales applied after); int4 with a bf16 copy kept beside the packed
weights; an int4 model's output head with its original weights in bf16. When is
`generation/model/prefill_mode.py`'s, the bf16 products `generation/model/bf16_products.py`'s,
and joining layers into one call `generation/model/fusion.py`'s.

`Int8Linear` and `Int4Linear` are `nn.Linear`s to everything that asks (PEFT adapts them like any
linear layer; their `weight` is the packed matrix, which PEFT reads only for its device), so LoRA
adapters load onto a quantised model as they do onto the original.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from generation.model.bf16_products import (
    COMPUTE,
    bf16_matmul,
    bf16_weights,
    in_tiles,
    plain_weights,
)
from generation.model.int4_rows import int4_kernel
from generation.model.prefill_mode import in_prefill, many_rows, wide_rows

GROUP = 32  # inputs per int4 scale and zero
BLOCK = 64  # the packed int4 layout interleaves output rows in blocks of this many


class QuantisedLinear(nn.Linear, ABC):
    """What the int8 and int4 layers share: the shape, the bias, and a forward around each
    kind's own product of a [rows, in] input (`product`)."""

    kind = ""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate a float weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @abstractmethod
    def product(self, flat: torch.Tensor) -> torch.Tensor:
        """`flat` [rows, in] times the weights, in `flat`'s dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.product(x.reshape(-1, self.in_features)).view(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.kind}"

    # bf16 weights laid out for oneDNN (`bf16_weights`) cannot be copied or pickled as they
    # are: a copy of the layer (copy.deepcopy of a model, as PEFT users do) takes them plain
    # and lays them out again.
    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        if state.get("wide") is not None:
            state["wide"] = plain_weights(state["wide"])
        return state

    def __setstate__(self, state: dict) -> None:
        if state.get("wide") is not None:
            state = {**state, "wide": bf16_weights(state["wide"])}
        super().__setstate__(state)


class Int8Linear(QuantisedLinear):
    """A linear layer holding int8 weights and one bf16 scale per output feature."""

    kind = "int8"

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear)
        weight = linear.weight.detach().to(torch.float32)
        scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(COMPUTE).tiny)
        quantised = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.weight = nn.Parameter(quantised, requires_grad=False)
        self.register_buffer("scales", scales.to(COMPUTE))
        # The output head sees one row per sequence even in a prefill (the last position's
        # logits only): widening its weights there would cost more than the kernel.
        self.kernel_only = False
        # An int4 model's head: its original weights in bf16 as well, for many rows (`keep_wide`).
        self.wide: torch.Tensor | None = None

    @classmethod
    def packed(cls, weight: torch.Tensor, scales: torch.Tensor) -> Int8Linear:
        """The layer holding int8 `weight` [out, in] and its bf16 `scales` as they are (from the
        conversion cache, `generation/model/served_cache.py`)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.out_features, layer.in_features = weight.shape
        layer.bias, layer.kernel_only, layer.wide = None, False, None
        layer.weight = nn.Parameter(weight, requires_grad=False)
        layer.register_buffer("scales", scales)
        return layer

    def keep_wide(self, linear: nn.Linear) -> None:
        """Also hold `linear`'s weights in bf16, for calls of `WIDE_ROWS` rows or more (two
        bytes a weight more; for the output head of an int4 model)."""
        self.wide = bf16_weights(linear.weight.detach().to(COMPUTE))

    def product(self, flat: torch.Tensor) -> torch.Tensor:
        if self.wide is not None and many_rows(flat.shape[0]):
            return bf16_matmul(flat, self.wide)
        return int8_matmul(flat, self.weight, self.scales, in_prefill() and not self.kernel_only)

    def dequantised(self) -> torch.Tensor:
        """The weights as bf16 (what the int8 values stand for)."""
        return self.weight.to(COMPUTE) * self.scales[:, None]


def int8_matmul(
    flat: torch.Tensor,
    weight: torch.Tensor,
    scales: torch.Tensor,
    wide: bool = False,
    cast: bool = True,
) -> torch.Tensor:
    """`flat` [rows, in] times int8 `weight` [out, in] with per-row `scales`, in `flat`'s dtype:
    with the kernel (in bf16 if not `cast`), or (`wide`) the weights widened to bf16 for the
    call."""
    if not wide:
        out = torch._weight_int8pack_mm(flat.to(COMPUTE), weight, scales)
        return out.to(flat.dtype) if cast else out
    # The kernel's own arithmetic: the integers (exact in bf16) times the input, then the
    # scales. Scaling the weights first would round each to bf16's 8 bits and the prefill
    # would compute with other weights than the decoding steps.
    widened = weight.to(COMPUTE)
    product = partial(F.linear, weight=widened)
    x = flat.to(COMPUTE)
    out = (in_tiles(product, x) if in_prefill() else product(x)).to(flat.dtype)
    return out * scales.to(flat.dtype)


class Int4Linear(QuantisedLinear):
    """A linear layer holding int4 weights (torch's packed CPU layout) with a bf16 scale and
    zero for every `GROUP` inputs of each output row: weight = (q - 8) * scale + zero; and the
    same weights widened to bf16 (`wide`) for prefills and calls of `WIDE_ROWS` rows or more
    (see `prefill_mode.prefilling`): the int4 kernel is compute-bound there, and widening per
    call would cost more than the product (`benchmarks/README.md`). So int4 holds 2.5 bytes a
    weight, against int8's 1 and fp32's 4, and reads half a byte a weight per decoding step of
    few rows."""

    kind = "int4"

    def __init__(self, linear: nn.Linear, wide: bool = True) -> None:
        super().__init__(linear)
        rows, columns = self.out_features, self.in_features
        groups = linear.weight.detach().to(torch.float32).view(rows, columns // GROUP, GROUP)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)
        scales = ((high - low) / 15.0).clamp(min=torch.finfo(COMPUTE).tiny)
        levels = ((groups - low[..., None]) / scales[..., None]).round().clamp(0, 15)
        packed = torch._convert_weight_to_int4pack_for_cpu(levels.view(rows, columns).int(), 8)
        self.weight = nn.Parameter(packed, requires_grad=False)
        scales, zeros = scales.to(COMPUTE), (low + 8.0 * scales).to(COMPUTE)
        # The kernel's layout: [groups, out, (scale, zero)].
        self.register_buffer(
            "scales_and_zeros", torch.stack([scales, zeros], -1).transpose(0, 1).contiguous()
        )
        self.wide: torch.Tensor | None = None
        if wide:  # what the kernel computes with: the bf16 scale and zero applied in fp32
            widened = (levels - 8.0) * scales.float()[..., None] + zeros.float()[..., None]
            self.wide = bf16_weights(widened.view(rows, columns).to(COMPUTE))

    @classmethod
    def packed(cls, weight: torch.Tensor, scales_and_zeros: torch.Tensor) -> Int4Linear:
        """The layer holding `weight` in the packed layout and its `scales_and_zeros` as they are
        (from the conversion cache), without the bf16 copy (`keep_wide` adds it)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.out_features, layer.in_features = weight.shape[0], weight.shape[1] * 2
        layer.bias, layer.wide = None, None
        layer.weight = nn.Parameter(weight, requires_grad=False)
        layer.register_buffer("scales_and_zeros", scales_and_zeros)
        return layer

    def keep_wide(self) -> None:
        """Hold the bf16 copy for many rows, widened from the packed weights (the same numbers
        as the constructor's)."""
        self.wide = bf16_weights(self.dequantised())

    @staticmethod
    def fits(linear: nn.Linear) -> bool:
        """Whether the packed layout can hold `linear`'s shape."""
        return linear.out_features % BLOCK == 0 and linear.in_features % GROUP == 0

    def product(self, flat: torch.Tensor) -> torch.Tensor:
        wide = self.wide if wide_rows(flat.shape[0]) else None
        return int4_matmul(flat, self.weight, self.scales_and_zeros, wide)

    def dequantised(self) -> torch.Tensor:
        """The weights as bf16 (what the int4 values stand for), from the packed ones."""
        return int4_dequantised(self.weight, self.scales_and_zeros)


def int4_matmul(
    flat: torch.Tensor,
    packed: torch.Tensor,
    scales_and_zeros: torch.Tensor,
    wide: torch.Tensor | None = None,
    cast: bool = True,
) -> torch.Tensor:
    """`flat` [rows, in] times the int4 weights, in `flat`'s dtype (in bf16 if not `cast`): with
    `wide` (the same weights in bf16) when given, else with torch's int4 kernel, or for many
    rows (`wide_rows`) the extension's kernel that widens them as it goes where there is one
    (`generation/model/int4_rows.py`)."""
    if wide is None:
        kernel = int4_kernel() if wide_rows(flat.shape[0]) else None
        x = flat.to(COMPUTE)
        if kernel is not None:  # many rows: widened as they are multiplied (`int4_rows`)
            out = kernel(x, packed, scales_and_zeros)
        else:
            out = torch._weight_int4pack_mm_for_cpu(x, packed, GROUP, scales_and_zeros)
        return out.to(flat.dtype) if cast else out
    return bf16_matmul(flat, wide)


def int4_dequantised(
    packed: torch.Tensor, scales_and_zeros: torch.Tensor, dtype: torch.dtype = COMPUTE
) -> torch.Tensor:
    """The weights [out, in] that `packed` and its scales stand for, in bf16 (or `dtype`: in fp32
    they are exact to fp32's rounding of the zero's sum). The packed layout holds,
    for each block of `BLOCK` output rows and each input, a byte per pair of rows j and j + 32
    (low and high four bits). Written into place step by step, the same arithmetic in the same
    order as the plain expression but much faster (it widens a whole model's bf16 copy at load:
    benchmarks/README.md)."""
    rows, columns = packed.shape[0], packed.shape[1] * 2
    blocks = packed.view(rows // BLOCK, columns, BLOCK // 2)
    levels = torch.empty(rows // BLOCK, 2, BLOCK // 2, columns, dtype=torch.uint8)
    levels[:, 0] = (blocks & 15).transpose(1, 2)
    levels[:, 1] = (blocks >> 4).transpose(1, 2)
    scales, zeros = scales_and_zeros.to(torch.float32).transpose(0, 1).unbind(-1)  # [out, groups]
    weight = levels.view(rows, columns // GROUP, GROUP).to(torch.float32)
    weight.sub_(8.0).mul_(scales[..., None]).add_(zeros[..., None])
    return weight.view(rows, columns).to(dtype)


def quantise(model: nn.Module, bits: int, wide: bool = True) -> int:
    """Make every linear layer of `model` an `Int8Linear` (`bits` 8) or an `Int4Linear` (`bits` 4;
    the output head, and any layer whose shape the packed layout cannot hold, `Int8Linear`, the
    head with its bf16 weights as well, as the int4 layers, unless not `wide`: see
    `generation/model/memory.py`); the number replaced. A head tied to the input
    embeddings is untied first: the embeddings keep their dtype for their lookup."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, not {bits}")
    head = getattr(model, "lm_head", None)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(head, nn.Linear) and embeddings is not None and head.weight is embeddings.weight:
        head.weight = nn.Parameter(embeddings.weight.detach().clone(), requires_grad=False)
        if getattr(model.config, "tie_word_embeddings", False):
            model.config.tie_word_embeddings = False
    replaced = 0
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear:
            four = bits == 4 and module is not head and Int4Linear.fits(module)
            layer = Int4Linear(module, wide) if four else Int8Linear(module)
            if module is head:
                layer.kernel_only = True
                if bits == 4 and wide:
                    layer.keep_wide(module)
                elif bits == 4:  # for `memory.keep_wide`, which decides and then drops it
                    layer.original_weight = module.weight.detach()
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, layer)
            replaced += 1
    return replaced
