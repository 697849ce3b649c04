"""Choosing the next token for one row: repetition penalty, temperature, top-p, seeded sampling."""

from __future__ import annotations

import torch

from generation.types import GenerationRequest


class RowSampler:
    """Per-request sampling state. Each row owns its generator, so a seed gives the same text
    whatever else shares the batch (up to the batch's floating-point noise)."""

    def __init__(self, request: GenerationRequest, device: torch.device) -> None:
        self.temperature = request.temperature
        self.top_p = request.top_p
        self.repetition_penalty = request.repetition_penalty
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(request.seed)

    def choose(self, logits: torch.Tensor, seen: torch.Tensor) -> int:
        """`logits`: [vocab] float32 for the next position; `seen`: token ids in the text."""
        if self.repetition_penalty != 1.0 and seen.numel():
            # The CTRL penalty, as transformers applies it: shrink positive scores, grow negative.
            picked = logits.gather(0, seen)
            picked = torch.where(
                picked < 0, picked * self.repetition_penalty, picked / self.repetition_penalty
            )
            logits = logits.scatter(0, seen, picked)
        if self.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1.0:
            # The nucleus almost always lies in the top few hundred tokens: sort only those
            # unless their mass falls short (then the full sort, so the result stays exact).
            sorted_probs, order = probs.topk(min(256, probs.numel()))
            if float(sorted_probs.sum()) < self.top_p:
                sorted_probs, order = probs.sort(descending=True)
            cumulative = sorted_probs.cumsum(0)
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            drop = cumulative - sorted_probs > self.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            choice = torch.multinomial(sorted_probs, 1, generator=self.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=self.generator))
