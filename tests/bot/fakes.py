"""A replaying test double of the engine: same face (stream/abort/queue_position/wait_ready)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from generation.backend import ReadyModel
from generation.errors import EngineBusy
from generation.remote.backend import RemoteModel
from generation.types import GenerationChunk, GenerationRequest, GenerationResult, drain


class ReplayEngine:
    """Yields queued texts word by word, `delay_s` apart; `busy` makes `stream` refuse."""

    model_id = "replay-model"
    context_tokens = 2048

    def __init__(self, texts: list[str] | None = None, delay_s: float = 0.01) -> None:
        self.texts = list(texts or ["Hello from the replay engine."])
        self.delay_s = delay_s
        self.busy_retry_s: float | None = None
        self.requests: list[GenerationRequest] = []
        self.aborted: set[str] = set()
        self.queued_s = 0.0  # time a request spends "waiting" (queue_position 1)
        self.finish_reason = "stop"  # "length": every text ends as if the token limit cut it
        self._waiting: set[str] = set()
        self._running: set[str] = set()
        self.adapters: list[str] = []  # names served beside the base (`add_adapter`)

    async def wait_ready(self) -> ReadyModel:
        return RemoteModel(self.model_id, "replay")

    def models(self) -> list[str]:
        return [self.model_id, *self.adapters]

    async def add_adapter(self, name: str, path: object) -> None:
        self.adapters.append(name)

    async def remove_adapter(self, name: str) -> None:
        self.adapters.remove(name)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return await drain(self.stream(request))

    def close(self) -> None:
        self.aborted |= self._waiting | self._running

    def queue_position(self, request_id: str) -> int | None:
        if request_id in self._waiting:
            return 1
        return 0 if request_id in self._running else None

    def abort(self, request_id: str) -> None:
        if request_id in self._waiting or request_id in self._running:
            self.aborted.add(request_id)

    async def aclose(self, grace_s: float = 0.0) -> None:
        return None

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if self.busy_retry_s is not None:
            raise EngineBusy(self.busy_retry_s)
        self.requests.append(request)
        text = self.texts[(len(self.requests) - 1) % len(self.texts)]
        self._waiting.add(request.request_id)
        return self._replay(request, text)

    async def _replay(
        self, request: GenerationRequest, text: str
    ) -> AsyncIterator[GenerationChunk]:
        rid = request.request_id
        await asyncio.sleep(self.queued_s)
        self._waiting.discard(rid)
        self._running.add(rid)
        try:
            words = text.split(" ")
            so_far = ""
            for n, word in enumerate(words, 1):
                if rid in self.aborted:
                    yield self._chunk(rid, "", so_far, n, "cancelled")
                    return
                delta = word if n == 1 else " " + word
                so_far += delta
                await asyncio.sleep(self.delay_s)
                yield GenerationChunk(rid, delta, so_far, tokens_out=n, model_id=self.model_id)
            yield self._chunk(rid, "", so_far, len(words), self.finish_reason)
        finally:
            self._running.discard(rid)

    def _chunk(self, rid: str, delta: str, text: str, n: int, reason: str) -> GenerationChunk:
        return GenerationChunk(
            rid, delta, text, True, reason, 10, n, 5.0, n * self.delay_s * 1000, self.model_id
        )  # type: ignore[arg-type]
