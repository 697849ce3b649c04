"""Reading one request's chunks off its outbox: what both engines' `stream` iterators do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from generation.types import GenerationChunk

Outbox = asyncio.Queue[GenerationChunk | BaseException]


async def consume(
    outbox: Outbox,
    *,
    done: Callable[[], bool],
    abort: Callable[[], None],
    wrap: Callable[[BaseException], BaseException] | None = None,
) -> AsyncIterator[GenerationChunk]:
    """Yield the chunks put on `outbox` until the finished one. An exception put there is
    raised: as is, or as `wrap(exc)` chained to it. When the consumer leaves early (it stops
    iterating, is cancelled, or the request failed) and `done()` is still false, `abort()` frees
    the request's place.

    Chunks that queued up while the consumer was busy come as one (their deltas joined): a
    consumer that falls behind catches up at once instead of a step at a time, and `muse serve`
    writes one event for them instead of one per token."""
    try:
        held: BaseException | None = None  # queued behind chunks that came joined
        while True:
            item = held if held is not None else await outbox.get()
            held = None
            if not isinstance(item, BaseException):
                item, held = _joined(item, outbox)
            if isinstance(item, BaseException):
                if wrap is None:
                    raise item
                raise wrap(item) from item
            yield item
            if item.finished:
                return
    finally:
        if not done():
            abort()


def _joined(item: GenerationChunk, outbox: Outbox) -> tuple[GenerationChunk, BaseException | None]:
    """`item` and the chunks already queued behind it, as one chunk; and an exception met
    behind them, which comes next."""
    deltas = [item.delta]
    while not item.finished and not outbox.empty():
        following = outbox.get_nowait()
        if isinstance(following, BaseException):
            return _with_deltas(item, deltas), following
        item = following
        deltas.append(item.delta)
    return _with_deltas(item, deltas), None


def _with_deltas(item: GenerationChunk, deltas: list[str]) -> GenerationChunk:
    return item if len(deltas) == 1 else replace(item, delta="".join(deltas))
