"""One request's life in the remote backend: the text the server streams, as Muse's chunks.

The text shown is `response_prefix` + what the server wrote, as with the local engine. A server
that was sent the prefix to continue (`RemoteConfig.prefill`) writes what follows it; one that
was not (llama-cpp-python's server, which would close a final assistant message and start a new
turn) often starts by writing the prefix itself, and that repetition is dropped, so the prefix
is never shown twice. Stop strings are enforced here as well as sent (a server may ignore them
or accept only four).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from generation.types import (
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    stop_prefix_length,
)


class RemoteJob:
    """A request in flight: its text so far, counts and timing, and its consumer's queue."""

    def __init__(self, request: GenerationRequest, max_new_tokens: int, model_id: str) -> None:
        self.request = request
        self.max_new_tokens = max_new_tokens
        self.model_id = model_id
        self.outbox: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()
        self.submitted = time.monotonic()
        self.deadline = self.submitted + request.timeout_s
        self.task: asyncio.Task[None] | None = None
        self.done = False
        self.first_token_at: float | None = None
        self.pieces = 0  # content deltas received: the token count when the server sends none
        self.usage_in: int | None = None
        self.usage_out: int | None = None
        self.server_reason: str | None = None
        self.attempts = 0
        self.raw = ""  # everything the server wrote
        self.text = request.response_prefix
        self.sent = 0  # characters of `text` already streamed
        self._skip: int | None = None if request.response_prefix.strip() else 0

    @property
    def streamed(self) -> bool:
        """Whether any text reached the consumer (after that, a failed request is never retried)."""
        return self.sent > 0

    def add(self, delta: str) -> bool:
        """Take a content delta from the server; True when a stop string has ended the text."""
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.pieces += 1
        self.raw += delta
        body = self._body()
        if body is None:
            return False
        for stop in self.request.stop:
            cut = body.find(stop) if stop else -1
            if cut >= 0:
                self.text = self.request.response_prefix + body[:cut]
                return True
        self.text = self.request.response_prefix + body
        self._emit_progress()
        return False

    def apply(self, event: dict[str, Any]) -> bool:
        """Take one chat-completion chunk; True when a stop string has ended the text."""
        if event.get("model"):
            self.model_id = str(event["model"])
        usage = event.get("usage")
        if isinstance(usage, dict):  # only when the server honours `include_usage`
            self.usage_in = usage.get("prompt_tokens", self.usage_in)
            self.usage_out = usage.get("completion_tokens", self.usage_out)
        for choice in event.get("choices") or []:
            delta = (choice.get("delta") or {}).get("content") or ""
            if delta and self.add(delta):
                return True
            if choice.get("finish_reason"):
                self.server_reason = str(choice["finish_reason"])
        return False

    def reset(self) -> None:
        """Forget a failed attempt that streamed nothing (a retry starts from scratch)."""
        self.raw, self.pieces, self.first_token_at = "", 0, None
        self.usage_in = self.usage_out = self.server_reason = None
        self.text = self.request.response_prefix
        self._skip = None if self.request.response_prefix.strip() else 0

    def finish(self, reason: FinishReason, error: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        if self._skip is None:  # undecided prefix repetition: show all the server wrote
            self._skip = 0
            self.text = self.request.response_prefix + self.raw
        delta = self.text[self.sent :]
        self.sent = len(self.text)
        self._put(
            self._chunk(
                delta,
                self.text,
                finished=True,
                finish_reason=reason,
                total_ms=(time.monotonic() - self.submitted) * 1000,
                error=error,
            )
        )

    def fail(self, exc: BaseException) -> None:
        """Hand an exception to the consumer, who raises it."""
        if not self.done:
            self.done = True
            self._put(exc)

    def _body(self) -> str | None:
        """The server's text without a restated prefix; None while it may still be one."""
        if self._skip is None:
            key = self.request.response_prefix.strip()
            lead = self.raw.lstrip()
            if len(lead) < len(key) and key.startswith(lead):
                return None
            restated = lead.startswith(key)
            self._skip = len(self.raw) - len(lead) + len(key) if restated else 0
        return self.raw[self._skip :]

    def _emit_progress(self) -> None:
        """Stream what is safe to show: not what might still become a stop string."""
        safe = len(self.text) - stop_prefix_length(self.text, self.request.stop)
        if safe > self.sent:
            delta = self.text[self.sent : safe]
            self.sent = safe
            self._put(self._chunk(delta, self.text[:safe]))

    def _chunk(self, delta: str, text: str, **extra: Any) -> GenerationChunk:
        ttft = None
        if self.first_token_at is not None:
            ttft = (self.first_token_at - self.submitted) * 1000
        return GenerationChunk(
            request_id=self.request.request_id,
            delta=delta,
            text=text,
            tokens_in=self.usage_in or 0,
            tokens_out=self.usage_out if self.usage_out is not None else self.pieces,
            ttft_ms=ttft,
            model_id=self.model_id,
            **extra,
        )

    def _put(self, item: GenerationChunk | BaseException) -> None:
        self.outbox.put_nowait(item)
