"""Reading an outbox: chunks that queued up come joined, an exception behind them next, and a
consumer that leaves early frees the request's place."""

from __future__ import annotations

import asyncio

import pytest

from generation.outbox import Outbox, consume
from generation.types import GenerationChunk


def piece(delta: str, text: str, finished: bool = False) -> GenerationChunk:
    return GenerationChunk("r", delta, text, finished=finished, tokens_out=len(text))


async def test_chunks_queued_while_the_consumer_was_busy_come_as_one():
    outbox: Outbox = asyncio.Queue()
    for item in (piece("a", "a"), piece("b", "ab"), piece("c", "abc")):
        outbox.put_nowait(item)
    stream = consume(outbox, done=lambda: False, abort=lambda: None)
    first = await anext(stream)
    assert (first.delta, first.text, first.tokens_out) == ("abc", "abc", 3)
    outbox.put_nowait(piece("d", "abcd"))
    outbox.put_nowait(piece("", "abcd", finished=True))
    outbox.put_nowait(piece("never", "read"))  # nothing is read past the finished chunk
    last = await anext(stream)
    assert (last.delta, last.finished) == ("d", True)
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert outbox.qsize() == 1


async def test_an_exception_behind_queued_chunks_comes_right_after_them():
    outbox: Outbox = asyncio.Queue()
    outbox.put_nowait(piece("a", "a"))
    outbox.put_nowait(piece("b", "ab"))
    outbox.put_nowait(RuntimeError("the step failed"))
    aborted = []
    stream = consume(outbox, done=lambda: False, abort=lambda: aborted.append(True))
    assert (await anext(stream)).delta == "ab"
    with pytest.raises(RuntimeError, match="the step failed"):
        await anext(stream)
    assert aborted == [True]  # not done: its place is freed
