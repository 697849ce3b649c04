"""One request's life in the engine: its tokens, its text, and handing chunks to its consumer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from generation.engine.mailbox import Mailbox
from generation.engine.sampling import row_generator
from generation.types import (
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    stop_prefix_length,
)


class Job:
    """A request as the worker thread sees it. Only the worker mutates it after admission."""

    def __init__(
        self,
        request: GenerationRequest,
        loop: asyncio.AbstractEventLoop,
        seq: int,
        max_new: int,
        mailbox: Mailbox,
    ) -> None:
        self.request = request
        self.loop = loop
        self.mailbox = mailbox  # the engine flushes it once per step
        self.seq = seq
        self.tag = 0  # fair-queuing order among users (set by the engine)
        self.max_new_tokens = max_new
        self.outbox: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()
        self.submitted = time.monotonic()
        self.deadline = self.submitted + request.timeout_s
        self.aborted = False
        self.done = False
        self.prompt_ids: list[int] = []
        self.generated: list[int] = []
        self.pending: int | None = None  # sampled, streamed, not yet fed to the model
        self.forced: list[int] = []  # tokens the engine writes next instead of sampling (a label)
        self.generator = row_generator(request)  # kept across an out-of-memory requeue
        self.text = request.response_prefix
        self.sent = 0  # characters of `text` already streamed
        self.first_token_at: float | None = None
        self.slot = (
            0  # the adapter that decodes it (generation/model/adapters.py; 0: the base model)
        )

    @property
    def user_key(self) -> str:
        return self.request.user_key or self.request.request_id

    def cached_tokens(self) -> list[int]:
        """What a (re-)prefill must put in the cache: everything except the pending token."""
        return self.prompt_ids + self.generated[: len(self.generated) - (self.pending is not None)]

    def accept(self, token: int, text: str, eos_ids: set[int]) -> FinishReason | None:
        """Record a sampled token and the decoded text; return why the job ends, if it does."""
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        if token in eos_ids and not self.request.ignore_eos:
            return "stop"
        self.generated.append(token)
        self.pending = token
        self.text = self.request.response_prefix + text
        for stop in self.request.stop:
            cut = text.find(stop)
            if stop and cut >= 0:
                self.text = self.request.response_prefix + text[:cut]
                return "stop"
        if len(self.generated) >= self.max_new_tokens:
            return "length"
        return None

    def emit_progress(self, model_id: str) -> None:
        """Stream what is safe to show: not a half-decoded character nor a possible stop prefix."""
        if self.done:
            return
        safe = len(self.text) - _held_back(self.text, self.request.stop)
        if safe > self.sent:
            delta = self.text[self.sent : safe]
            self.sent = safe
            self._put(self._chunk(delta, self.text[:safe], model_id))

    def finish(self, reason: FinishReason, model_id: str, error: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        delta = self.text[self.sent :]
        self.sent = len(self.text)
        now = time.monotonic()
        self._put(
            self._chunk(
                delta,
                self.text,
                model_id,
                finished=True,
                finish_reason=reason,
                total_ms=(now - self.submitted) * 1000,
                error=error,
            )
        )

    def fail(self, exc: BaseException) -> None:
        """Hand an exception to the consumer, who raises it."""
        if not self.done:
            self.done = True
            self._put(exc)

    def _chunk(self, delta: str, text: str, model_id: str, **extra: Any) -> GenerationChunk:
        ttft = (
            (self.first_token_at - self.submitted) * 1000
            if self.first_token_at is not None
            else None
        )
        return GenerationChunk(
            request_id=self.request.request_id,
            delta=delta,
            text=text,
            tokens_in=len(self.prompt_ids),
            tokens_out=len(self.generated),
            ttft_ms=ttft,
            model_id=self.request.model or model_id,  # the adapter's name, or the base's id
            **extra,
        )

    def _put(self, item: GenerationChunk | BaseException) -> None:
        self.mailbox.put(self.loop, self.outbox, item)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters might still turn into a stop string or a complete character."""
    return max(stop_prefix_length(text, stops), 1 if text.endswith("\ufffd") else 0)
