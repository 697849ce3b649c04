"""One decoding step of a Llama-architecture model, written out instead of through transformers'
forward.

A one-row step of the default model on the CPU is short (a few milliseconds of matrix products
with int4 weights; see benchmarks/README.md), so the Python around them decides its speed:
transformers' forward builds a mask, passes keyword arguments through five levels of modules per
layer and calls each projection on its own, and every tensor operation here costs a few
microseconds whatever its size. This step
does what transformers' Llama layers do, in the same order and with the same operations (so each
row's numbers are those of `model(...)`, bit for bit: `tests/generation/model/test_llama_step.py`),
without the bookkeeping:

- When no row of the step uses an adapter, the layers' weights are called directly (no module
  calls), the batch held as [rows, features], and with int8 or int4 weights the query/key/value
  projections, and the gate/up projections, run as one kernel call each over weights fused once
  (`generation.model.fusion.fuse`; the layers' own weights become views into them, no memory
  added).
- When some row uses an adapter, the step calls the model's modules (an adapter wraps them,
  `generation/model/adapters.py`), still without transformers' forward around them.

- Rows of an int4 model with no adapter, and fewer than `prefill_mode.WIDE_ROWS` of an int8 one,
  take the C++ step (`generation/model/native_step.py`) where it could be built: the same
  arithmetic as loops, equal to this step's to bf16 rounding.

Only for models whose layers are transformers' Llama layers (`LlamaStep.supports`) with growing
cache layers (`batch_runner.GrowingLayer`); the others keep the model's forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from generation.model.bf16_products import bf16_matmul
from generation.model.fusion import fuse
from generation.model.native_step import NativeQuantisedStep
from generation.model.prefill_mode import wide_rows
from generation.model.quantize import Int4Linear, Int8Linear, int4_matmul, int8_matmul

SUPPORTED = ("LlamaForCausalLM",)


@dataclass(frozen=True, slots=True)
class _Projection:
    """A linear layer's weights, called without the module: int4, int8 or plain; and the bf16
    weights an int4 model multiplies many rows or more with, one per layer of a fused
    projection (they stay each layer's own), if it has them."""

    weight: torch.Tensor
    scales: torch.Tensor | None
    bits: int  # 4, 8, or 0 for a plain float weight
    wide: tuple[torch.Tensor, ...] = ()

    @staticmethod
    def of(module: nn.Module) -> _Projection:
        module = getattr(module, "base_layer", module)  # under an adapter's wrapper
        layers = getattr(module, "parts", [module])  # a fused projection's layers
        wide = tuple(layer.wide for layer in layers if getattr(layer, "wide", None) is not None)
        wide = wide if len(wide) == len(layers) else ()
        if isinstance(module, Int4Linear):
            return _Projection(module.weight, module.scales_and_zeros, 4, wide)
        if isinstance(module, Int8Linear):
            return _Projection(module.weight, module.scales, 8, wide)
        return _Projection(module.weight, None, 0)

    def __call__(self, x: torch.Tensor, raw: bool = False) -> torch.Tensor:
        """`x` times the weights, in `x`'s dtype; `raw`: in the kernel's own (bf16 for int8 /
        int4), for a caller whose next operation widens it anyway (adding it to an fp32
        tensor gives the same numbers as widening first, one call fewer). The numbers of the
        layers' own `product` (`tests/generation/model/test_llama_step.py`)."""
        if self.wide and wide_rows(x.shape[0]):
            if len(self.wide) == 1:
                return bf16_matmul(x, self.wide[0], cast=not raw)
            return torch.cat([bf16_matmul(x, part, cast=not raw) for part in self.wide], -1)
        if self.bits == 4:
            return int4_matmul(x, self.weight, self.scales, cast=not raw)
        if self.bits == 8:
            return int8_matmul(x, self.weight, self.scales, cast=not raw)
        return F.linear(x, self.weight)


@dataclass(frozen=True, slots=True)
class _Layer:
    """One decoder layer's weights for the direct path."""

    attention_norm: torch.Tensor
    mlp_norm: torch.Tensor
    qkv: tuple[_Projection, ...]  # one fused projection, or the three
    out: _Projection
    gate_up: tuple[_Projection, ...]  # one fused projection, or the two
    down: _Projection
    scaling: float


def _fused_or_each(*modules: nn.Module) -> tuple[_Projection, ...]:
    bases = [getattr(module, "base_layer", module) for module in modules]
    fused = fuse(bases)
    return (_Projection.of(fused),) if fused is not None else tuple(map(_Projection.of, bases))


def _projected(
    projections: tuple[_Projection, ...], x: torch.Tensor, raw: bool = False
) -> torch.Tensor:
    if len(projections) == 1:
        return projections[0](x, raw)
    return torch.cat([projection(x, raw) for projection in projections], -1)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' `LlamaRMSNorm`, operation for operation."""
    if x.dtype == torch.float32:  # the casts are no-ops, but each would cost a call
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class LlamaStep:
    """`step(ids, mask, positions, cache, routed)` for one new token per row; returns the last
    logits [rows, vocab] as float32, the cache holding the new column. `routed`: some row uses
    an adapter (the modules are called)."""

    @staticmethod
    def supports(model: Any) -> bool:
        config = model.config
        layers = getattr(getattr(model, "model", None), "layers", None)
        return (
            type(model).__name__ in SUPPORTED
            and getattr(config, "_attn_implementation", None) == "sdpa"
            and getattr(config, "pretraining_tp", 1) == 1
            and not getattr(config, "attention_bias", False)
            and not getattr(config, "mlp_bias", False)
            and bool(layers)
            and all(type(layer.input_layernorm).__name__ == "LlamaRMSNorm" for layer in layers)
        )

    def __init__(self, model: Any) -> None:
        self.model = model
        self.inner = model.model
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.groups = self.heads // self.kv_heads
        self.width = self.heads + 2 * self.kv_heads  # heads in the projections side by side
        self.eps = float(config.rms_norm_eps)
        self.act = self.inner.layers[0].mlp.act_fn.forward
        self.layers = [
            _Layer(
                attention_norm=layer.input_layernorm.weight,
                mlp_norm=layer.post_attention_layernorm.weight,
                qkv=_fused_or_each(
                    layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj
                ),
                out=_Projection.of(layer.self_attn.o_proj),
                gate_up=_fused_or_each(layer.mlp.gate_proj, layer.mlp.up_proj),
                down=_Projection.of(layer.mlp.down_proj),
                scaling=layer.self_attn.scaling,
            )
            for layer in self.inner.layers
        ]
        self.intermediate = config.intermediate_size
        self.final_norm = self.inner.norm.weight
        self.head = _Projection.of(model.lm_head)
        self.native = NativeQuantisedStep.of(self)  # the step of an int8 / int4 model in C++

    @torch.inference_mode()
    def __call__(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        routed: bool = False,
    ) -> torch.Tensor:
        x = self.inner.embed_tokens(ids)  # [rows, 1, hidden]
        cos, sin = self.inner.rotary_emb(x, positions)  # [rows, 1, dim]
        # Queries and keys rotate together: x * cos + rotate_half(x) * sin, with
        # rotate_half(x) = (-x2, x1) written as roll(x) = (x2, x1) times (-sin1, sin2).
        half = cos.shape[-1] // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), -1)
        if self.native is not None and not routed and self.native.serves(x.shape[0]):
            return self.native(x, cos, sin, mask, cache)
        # As transformers does, for the same numbers: a mask that hides nothing is dropped and
        # attention groups the query heads itself; under a mask, the query heads of each
        # key/value head are packed together (`pack_gqa`).
        allowed = None if bool(mask.all()) else mask.bool()[:, None, None, :]
        if routed:
            x = self._through_modules(x, cos, sin, allowed, cache)
            return self.model.lm_head(self.inner.norm(x)[:, -1]).float()
        x = x[:, 0]  # [rows, hidden]
        for layer, cached in zip(self.layers, cache.layers, strict=True):
            qkv = _projected(layer.qkv, _rms_norm(x, layer.attention_norm, self.eps), raw=True)
            out = self._attention(
                qkv.view(x.shape[0], self.width, -1), cos, sin, allowed, cached, layer.scaling
            )
            x = x + layer.out(out, raw=True)
            gate_up = _projected(layer.gate_up, _rms_norm(x, layer.mlp_norm, self.eps))
            gate, up = gate_up.split(self.intermediate, dim=-1)
            x = x + layer.down(self.act(gate) * up, raw=True)
        return self.head(_rms_norm(x, self.final_norm, self.eps)).float()

    def _attention(
        self,
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        allowed: torch.Tensor | None,
        cached: Any,
        scaling: float,
    ) -> torch.Tensor:
        """`qkv` [rows, heads side by side, dim] → the attention's output [rows, heads × dim],
        the new keys and values appended to `cached`."""
        rows, heads, rotated = qkv.shape[0], self.heads, self.heads + self.kv_heads
        qk = qkv[:, :rotated]  # times the fp32 cos and sin: fp32, as transformers has it
        qk = qk * cos + qk.roll(qk.shape[-1] // 2, -1) * sin
        values = qkv[:, rotated:, None]
        if values.dtype != qk.dtype:  # the kernel's bf16: the cache holds the model's dtype
            values = values.to(qk.dtype)
        keys, values = cached.update(qk[:, heads:, None], values)
        if allowed is None:
            q = qk[:, :heads, None]
            out = F.scaled_dot_product_attention(
                q, keys, values, scale=scaling, enable_gqa=self.groups > 1
            )
        else:
            q = qk[:, :heads].reshape(rows, self.kv_heads, self.groups, -1)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, scale=scaling)
        return out.reshape(rows, -1)

    def _through_modules(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        allowed: torch.Tensor | None,
        cache: Any,
    ) -> torch.Tensor:
        """The layers through their modules ([rows, 1, features]), for adapters' rows."""
        rows = x.shape[0]
        for layer, cached in zip(self.inner.layers, cache.layers, strict=True):
            attn, mlp = layer.self_attn, layer.mlp
            h = layer.input_layernorm(x)
            qkv = torch.cat((attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)), -1)
            qkv = qkv.view(rows, self.width, -1)
            out = self._attention(qkv, cos, sin, allowed, cached, attn.scaling)
            x = x + attn.o_proj(out.view(rows, 1, -1))
            h = layer.post_attention_layernorm(x)
            x = x + mlp.down_proj(mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h))
        return x
