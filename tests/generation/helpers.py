"""What the generation tests share: a short request, how far logits may move with the weights."""

from __future__ import annotations

import torch

from generation.model.loading import LoadedModel, describe
from generation.types import GenerationRequest, Message


def logit_tolerance(loaded: LoadedModel) -> float:
    """How far a row's logits may move when other rows share its batch or its beginning was
    remembered: fp32 only reorders sums (1e-3); with bf16 arithmetic (int8 and int4 weights
    compute in it) each layer's input is rounded to bf16's 8 bits, and the logits come out in
    bf16 (0.06 apart near 12): measured up to 0.47 with int8, so 0.75."""
    if describe(loaded).startswith(("int8", "int4")):
        return 0.75
    return 1e-3 if loaded.dtype == torch.float32 else 0.75


def ask(text: str, **kwargs) -> GenerationRequest:
    kwargs.setdefault("max_new_tokens", 12)
    return GenerationRequest(messages=(Message("user", text),), **kwargs)
