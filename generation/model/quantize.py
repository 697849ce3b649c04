"""Weight-only int8 and int4 linear layers for the CPU engine (`MUSE_WEIGHTS=int8` / `int4`).

A decoding step of a small model on the CPU is bound by reading the weights: fp32 reads 4 bytes
per parameter each step, int8 one, int4 half of one. torch's own kernels
(`_weight_int8pack_mm`: one scale per output row; `_weight_int4pack_mm_for_cpu`: a scale and a
zero per 32 inputs of each row) multiply bf16 activations by those weights (with fp32
activations they are many times slower), so each layer takes its input to bf16 and gives its
output back in the model's dtype: the rest of the model (norms, attention, the residual stream,
the cache) stays as it was, fp32 on the CPU. Measured on the default model that costs nothing
against running all of it in bf16, and the drift from fp32 is the weights' rounding alone.

int4 in groups of 32 with a scale and a minimum is how a Q4_0 / Q4_1 GGUF holds its weights, so
for such a file (the default model) the groups found again from its de-quantised weights are the
file's own: little is lost beyond rounding each group's scale and zero to bf16. The output head
stays int8 (the GGUF keeps it 8-bit too).

The int kernels' cost grows with every row they multiply (they are compute-bound beyond a few
rows), where one bf16 matrix product of many rows on the CPU's bf16 units costs about what one
row does. So many rows multiply with bf16 weights instead: a prefill's forward (inside
`prefilling()`; int8: widened for the call, exactly, bf16 holds every int8, the scales applied
after; int4: a bf16 copy kept beside the packed weights), and with int4 also a decoding step of
`WIDE_ROWS` rows or more (the bf16 copy; for the output head, the original weights in bf16).
Figures in `benchmarks/README.md`.

`Int8Linear` and `Int4Linear` are `nn.Linear`s to everything that asks (PEFT adapts them like any
linear layer; their `weight` is the packed matrix, which PEFT reads only for its device), so LoRA
adapters load onto a quantised model as they do onto the original.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

GROUP = 32  # inputs per int4 scale and zero
BLOCK = 64  # the packed int4 layout interleaves output rows in blocks of this many
COMPUTE = torch.bfloat16
# From this many rows in one call, an int4 model multiplies with its bf16 weights outside prefills
# too. The int4 kernel's cost grows with the rows (one pass of the default model's layers, each
# with weights of its own: 3.7 ms at one row, 11.9 at 8, 21.9 at 16), the bf16 product's hardly
# (12.3 ms at 1, 8 or 16 rows); the int8 head: 3.2 ms at 8 rows, 6.5 at 16, in bf16 2.1 and 2.3.
# In whole decoding steps (`benchmarks/step.py`): 8 rows 26.3 ms with the kernels, 27.8 in bf16;
# 12 rows 36.4 against 30.2; 16 rows 46.5 against 33.2.
WIDE_ROWS = 10
# A prefill's bf16 products go in tiles of exactly this many rows (the last one padded with
# zeros): oneDNN picks its kernel by the number of rows (here 15 to 32 rows round otherwise than
# 8 or 33 and more), so a token's numbers would move with how many tokens share its forward, and
# a prompt whose beginning the prefix cache remembered (only the rest is computed) would decode
# otherwise than the same prompt computed whole: the same seed would not give the same text.
# 64 rows round here as a whole prompt's product did before tiles. The padding and the smaller
# calls cost a prefill here (one thread, a busy 2-core machine, best of 6) 60 tokens 77 → 87 ms,
# 200 tokens 130-170 → 180-260 ms, 500 tokens 415-460 → 505-580 ms; decoding steps are as before.
PREFILL_TILE = 64

_phase = threading.local()  # .prefilling: this thread runs a prefill's forward


@contextmanager
def prefilling() -> Iterator[None]:
    """Inside (on this thread), quantised layers multiply with bf16 weights, whatever the number
    of rows: a prefill's many rows run on the CPU's bf16 units, where the int kernels are
    compute-bound at a third of their speed. Outside, int8 layers use their kernel; int4 layers
    theirs below `WIDE_ROWS` rows and the bf16 copy from there on (`wide_rows`). The int
    kernels give a row the same numbers however many rows share the call; the bf16 product can
    move an output by one bf16 rounding step with the number of rows (oneDNN picks its kernel
    by it), and the two ways differ by bf16 rounding. So with quantised weights a row's numbers
    depend on what shares its batch by that much; fp32 (`MUSE_WEIGHTS=fp32`) is the exact
    choice."""
    before = getattr(_phase, "prefilling", False)
    _phase.prefilling = True
    try:
        yield
    finally:
        _phase.prefilling = before


def in_prefill() -> bool:
    return getattr(_phase, "prefilling", False)


def wide_rows(rows: int) -> bool:
    """Whether a call of `rows` rows multiplies an int4 model's weights in bf16."""
    return rows >= WIDE_ROWS or in_prefill()


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
        if self.wide is not None and flat.shape[0] >= WIDE_ROWS:
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
    (see `prefilling`): the int4 kernel is compute-bound there at a third of the bf16 units'
    speed or less, and widening per call would cost more than the product (~8 ns a weight
    here). So int4 holds 2.5 bytes a weight, against int8's 1 and fp32's 4, and reads half a
    byte a weight per decoding step of few rows."""

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
    """`flat` [rows, in] times the int4 weights, in `flat`'s dtype: with the kernel (in bf16 if
    not `cast`), or with `wide` (the same weights in bf16) when given."""
    if wide is None:
        out = torch._weight_int4pack_mm_for_cpu(flat.to(COMPUTE), packed, GROUP, scales_and_zeros)
        return out.to(flat.dtype) if cast else out
    return bf16_matmul(flat, wide)


def bf16_weights(weight: torch.Tensor) -> torch.Tensor:
    """bf16 `weight` [out, in] laid out once for oneDNN's matrix product (`bf16_matmul`), or as
    it is where oneDNN cannot take it. `F.linear` lays the weights out again on every call:
    a pass over the default model's layers at 16 rows took 17.6 ms that way, 12.3 laid out once
    (the int4 kernel: 21.9)."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return weight
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, 16)
    except RuntimeError:  # a build or CPU without oneDNN's bf16 product
        return weight


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


def plain_weights(weight: torch.Tensor) -> torch.Tensor:
    """`bf16_weights`' weights as an ordinary tensor again."""
    return weight.to_dense() if weight.is_mkldnn else weight


def int4_dequantised(packed: torch.Tensor, scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """The bf16 weights [out, in] that `packed` and its scales stand for. The packed layout holds,
    for each block of `BLOCK` output rows and each input, a byte per pair of rows j and j + 32
    (low and high four bits). Written into place step by step (2.3x faster than the plain
    expression here, 12 ns a weight: it widens a whole model's bf16 copy at load), the same
    arithmetic in the same order."""
    rows, columns = packed.shape[0], packed.shape[1] * 2
    blocks = packed.view(rows // BLOCK, columns, BLOCK // 2)
    levels = torch.empty(rows // BLOCK, 2, BLOCK // 2, columns, dtype=torch.uint8)
    levels[:, 0] = (blocks & 15).transpose(1, 2)
    levels[:, 1] = (blocks >> 4).transpose(1, 2)
    scales, zeros = scales_and_zeros.to(torch.float32).transpose(0, 1).unbind(-1)  # [out, groups]
    weight = levels.view(rows, columns // GROUP, GROUP).to(torch.float32)
    weight.sub_(8.0).mul_(scales[..., None]).add_(zeros[..., None])
    return weight.view(rows, columns).to(COMPUTE)


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
