"""Weight-only int8 linear layers for the CPU engine (`MUSE_WEIGHTS=int8`).

A decoding step of a small model on the CPU is bound by reading the weights: fp32 reads 4 bytes
per parameter each step, int8 one. torch's own `_weight_int8pack_mm` multiplies bf16 activations
by int8 weights with one scale per output row (with fp32 activations it is many times slower), so
each layer takes its input to bf16 and gives its output back in the model's dtype: the rest of
the model (norms, attention, the residual stream, the cache) stays as it was, fp32 on the CPU.
Measured on the default model that costs nothing against running all of it in bf16, and the
drift from fp32 is the weights' rounding alone. For many rows at once (a prefill) the integers
are widened to bf16 for that call instead (exactly: bf16 holds every int8), the scales applied
after: one matrix product on the CPU's bf16 units beats the
row-wise kernel there (figures in `benchmarks/README.md`).

`Int8Linear` is an `nn.Linear` to everything that asks (PEFT adapts it like any linear layer;
its `weight` is the int8 matrix, which PEFT reads only for its device), so LoRA adapters load
onto a quantised model as they do onto the original.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Up to this many rows in one call use the int8 kernel; more widen the weights once for the call.
KERNEL_ROWS = 32
COMPUTE = torch.bfloat16


class Int8Linear(nn.Linear):
    """A linear layer holding int8 weights and one bf16 scale per output feature."""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate a float weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().to(torch.float32)
        scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(COMPUTE).tiny)
        quantised = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.weight = nn.Parameter(quantised, requires_grad=False)
        self.register_buffer("scales", scales.to(COMPUTE))
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(COMPUTE)
        if flat.shape[0] <= KERNEL_ROWS:
            out = torch._weight_int8pack_mm(flat, self.weight, self.scales).to(x.dtype)
        else:
            # The kernel's own arithmetic: the integers (exact in bf16) times the input, then
            # the scales. Scaling the weights first would round each to bf16's 8 bits and the
            # prefill would compute with other weights than the decoding steps.
            out = F.linear(flat, self.weight.to(COMPUTE)).to(x.dtype) * self.scales.to(x.dtype)
        out = out.view(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def dequantised(self) -> torch.Tensor:
        """The weights as bf16 (what the int8 values stand for)."""
        return self.weight.to(COMPUTE) * self.scales[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantise_int8(model: nn.Module) -> int:
    """Make every linear layer of `model` (the output head too) an `Int8Linear`; the number
    replaced. A head tied to the input embeddings is untied first: the embeddings keep their
    dtype for their lookup."""
    head = getattr(model, "lm_head", None)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(head, nn.Linear) and embeddings is not None and head.weight is embeddings.weight:
        head.weight = nn.Parameter(embeddings.weight.detach().clone(), requires_grad=False)
        if getattr(model.config, "tie_word_embeddings", False):
            model.config.tie_word_embeddings = False
    replaced = 0
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, Int8Linear(module))
            replaced += 1
    return replaced
