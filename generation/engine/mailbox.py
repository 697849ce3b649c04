"""Handing the worker's chunks to event loops: one wake-up per loop per step, not one per row."""

from __future__ import annotations

import asyncio
import contextlib
import threading

Delivery = tuple[asyncio.Queue, object]


class Mailbox:
    """Items for asyncio queues, collected from any thread and handed over by `flush` in one
    `call_soon_threadsafe` per event loop.

    Each wake-up of a loop from the worker costs the worker a GIL hand-off, and when the loop
    keeps re-taking the GIL that hand-off waits out the interpreter's switch interval: one
    wake-up per row per step held a many-row step on a GPU to several times what the model
    itself needs (see benchmarks/README.md).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[asyncio.AbstractEventLoop, list[Delivery]] = {}

    def put(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, item: object) -> None:
        with self._lock:
            self._pending.setdefault(loop, []).append((queue, item))

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for loop, items in pending.items():
            # A closed loop means nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[Delivery]) -> None:
    for queue, item in items:
        queue.put_nowait(item)
