"""`Backend`: the one face of whatever writes the text, as `MUSE_BACKEND` chooses: the local
batching `Engine` (`generation/engine/`), the remote `OpenAIBackend` (`generation/remote/`) and
the tests' doubles. "Engine" names the local one only; the bot holds a `Backend` (its `engine`
argument and attribute keep their contract name). Nothing outside `generation/` needs to know
which it has."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from generation.types import GenerationChunk, GenerationRequest, GenerationResult


@runtime_checkable
class ReadyModel(Protocol):
    """What `wait_ready` returns: enough to say which model answers, and where."""

    model_id: str
    device: Any  # a torch.device for the local engine, the server's URL for the remote one


@runtime_checkable
class Backend(Protocol):
    """`stream` / `generate` / `abort` over one base model and its adapters (`models`)."""

    @property
    def model_id(self) -> str:
        """The base model's id ("" until it is known)."""
        ...

    @property
    def context_tokens(self) -> int | None:
        """The model's context length in tokens, or None when the backend does not know."""
        ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Queue `request` now (raising `EngineBusy` at once when full) and return its chunks;
        leaving the iterator early aborts the request."""
        ...

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """The whole text of `request`."""
        ...

    def abort(self, request_id: str) -> None:
        """Stop a request wherever it is; unknown ids are ignored."""
        ...

    def queue_position(self, request_id: str) -> int | None:
        """1-based place in the waiting line, 0 once running, None when unknown."""
        ...

    def models(self) -> list[str]:
        """The names this backend can serve, the base model first."""
        ...

    async def add_adapter(self, name: str, path: Path | str) -> None:
        """Serve the LoRA adapter in `path` as `name` from now on, without a restart (a freshly
        tuned one); raises an exception saying why when it cannot."""
        ...

    async def remove_adapter(self, name: str) -> None:
        """Stop serving the adapter `name`; raises an exception saying why when it cannot."""
        ...

    async def wait_ready(self) -> ReadyModel:
        """Wait until the model can serve; raises `ModelLoadError` when it cannot."""
        ...

    def close(self) -> None:
        """Cancel everything and stop, without waiting."""
        ...

    async def aclose(self, grace_s: float = 0.0) -> None:
        """Stop accepting, let running requests finish for up to `grace_s`, then stop."""
        ...
