"""Reading one request's chunks off its outbox: what both engines' `stream` iterators do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

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
    the request's place."""
    try:
        while True:
            item = await outbox.get()
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
