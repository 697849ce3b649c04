"""Where a generation is shown, whatever the front end: a Discord reply or thread message, the
terminal. The core drives a surface; the surface only shows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bot.core.settle import Settled
from generation.types import GenerationChunk


@dataclass(frozen=True, slots=True)
class Shown:
    """The messages that show a finished generation (None: not a message, e.g. the terminal)."""

    message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)


class Surface(Protocol):
    """One generation's reply."""

    async def refuse(self, text: str) -> None:
        """Nothing was started (busy, restarting): say why."""

    async def begin(self) -> int | None:
        """Show that work started; the reply's message id when it is known already."""

    def started(self, generation_id: int | None) -> None:
        """The generation's row was written (None: it could not be)."""

    def on_chunk(self, chunk: GenerationChunk) -> None:
        """Every chunk as it arrives (a terminal prints the delta)."""

    async def progress(self, latest: GenerationChunk | None, queued: int | None) -> None:
        """Called a few times a second while streaming; the surface decides whether to show
        the text so far (`latest`) or the place in the queue (`queued`)."""

    async def show(self, settled: Settled) -> Shown:
        """The finished text (with its buttons when `settled.rateable`)."""

    async def fail(self, text: str) -> None:
        """Replace whatever was shown with `text` (the failure)."""

    async def notify(self, text: str) -> None:
        """A private note to the requester (the first-use notice)."""


class CompareSurface(Protocol):
    """/compare's reply: two takes, A and B."""

    async def refuse(self, text: str) -> None: ...

    async def begin(self) -> int | None: ...

    def started(self, generation_ids: Sequence[int]) -> None: ...

    def on_chunk(self, index: int, chunk: GenerationChunk) -> None: ...

    async def progress(self, latest: Sequence[GenerationChunk | None]) -> None: ...

    async def show(self, takes: Sequence[Settled]) -> Shown:
        """Both finished takes (with vote buttons unless one was cut off by a shutdown)."""

    async def fail(self, text: str) -> None: ...

    async def notify(self, text: str) -> None: ...
