"""The generation layer's data: what a request asks for and what comes back."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled", "timeout", "error"]


@dataclass(frozen=True, slots=True)
class Message:
    """One chat turn as the model sees it."""

    role: Literal["system", "user", "assistant"]
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """Everything the engine needs to produce one text."""

    messages: tuple[Message, ...]
    max_new_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    # Always set, so a record can say which seed produced a text (and, with fp32 weights,
    # reproduce it exactly).
    seed: int = field(default_factory=lambda: secrets.randbelow(2**31))
    stop: tuple[str, ...] = ()
    # Words the answer starts with, fed after the prompt and shown as the text's start
    # (e.g. "Innkeeper:" so a small model keeps to the dialogue format).
    response_prefix: str = ""
    # A labelled form ("Giver", "Goal", …): the local engine starts each new line with the next
    # label itself and ends the answer once every label has its line (a small model skips some).
    labels: tuple[str, ...] = ()
    timeout_s: float = 120.0
    # Generate past the end-of-text token (benchmarks, as vLLM's `ignore_eos`).
    ignore_eos: bool = False
    # Who asked: fairness across users in the queue. Not sent to the model.
    user_key: str = ""
    # The registered model that should write it: the base model's id or an adapter's name
    # (None: the base model).
    model: str | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True, slots=True)
class GenerationChunk:
    """A piece of streamed output; the last chunk has ``finished=True``."""

    request_id: str
    delta: str
    text: str
    finished: bool = False
    finish_reason: FinishReason | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    ttft_ms: float | None = None
    total_ms: float | None = None
    model_id: str = ""  # who wrote it: the base model's id or the adapter's name
    error: str | None = None


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """A whole generation, as ``engine.generate`` returns it."""

    request_id: str
    text: str
    finish_reason: FinishReason
    tokens_in: int
    tokens_out: int
    ttft_ms: float | None
    total_ms: float
    model_id: str
    error: str | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_out / (self.total_ms / 1000) if self.total_ms > 0 else 0.0


async def drain(chunks: AsyncIterator[GenerationChunk]) -> GenerationResult:
    """The whole generation a stream of chunks ends in (`engine.generate` for every backend)."""
    last: GenerationChunk | None = None
    async for chunk in chunks:
        last = chunk
    if last is None or last.finish_reason is None:
        raise RuntimeError("the stream ended without a final chunk")
    return GenerationResult(
        request_id=last.request_id,
        text=last.text,
        finish_reason=last.finish_reason,
        tokens_in=last.tokens_in,
        tokens_out=last.tokens_out,
        ttft_ms=last.ttft_ms,
        total_ms=last.total_ms or 0.0,
        model_id=last.model_id,
        error=last.error,
    )


def stop_prefix_length(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of `text` might still grow into a stop string: streaming
    holds them back until the next piece decides."""
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if stop.startswith(text[-size:]):
                hold = max(hold, size)
                break
    return hold
