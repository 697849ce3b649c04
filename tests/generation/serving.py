"""`muse serve`'s server on a free loopback port, for the serve tests: started on demand, all
closed when the test ends."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from generation.backend import Backend
from generation.serve import ServeConfig, Server

Start = Callable[..., Awaitable[Server]]


@contextlib.asynccontextmanager
async def servers(default: Callable[[], Backend]) -> AsyncIterator[Start]:
    """`start(engine=None, wait=True, **config)`: a server over `engine` (None: `default()`),
    ready to answer once its engine has loaded (unless `wait` is false)."""
    started: list[Server] = []

    async def start(engine: Any = None, *, wait: bool = True, **config: Any) -> Server:
        server = await Server(engine or default(), ServeConfig(port=0, **config)).start()
        if wait:
            await server.wait_loaded()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.close()
