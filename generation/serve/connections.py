"""Listening with a cap on open connections.

Every connection holds a file descriptor and a handler from its first byte, before its request
head is read and long before the key is checked; without a cap, a client that opens sockets and
never finishes a request exhausts the process's descriptors (1,024 by default) and no one else
is served. Over the cap a connection is answered `503` in OpenAI's shape and closed at once,
never queued. How long a connection may take to send its request head is aiohttp's keep-alive
timer (see generation/serve/server.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import weakref

from aiohttp import web
from yarl import URL

from generation.serve.errors import SERVER, error_body

log = logging.getLogger("muse.generation.serve")

SPARE_DESCRIPTORS = 64  # for the model's files, the log, the engine's own sockets


def _refusal(cap: int) -> bytes:
    body = json.dumps(
        error_body(
            f"The server already has {cap} open connections; try again shortly.",
            SERVER,
            code="too_many_connections",
        )
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class _Refused(asyncio.Protocol):
    """A connection over the cap: one 503 and closed, whatever it sends."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self._answer)
        transport.close()


class _Counted(asyncio.Protocol):
    """aiohttp's handler for one connection, counted in `live` until the connection ends."""

    def __init__(self, handler: asyncio.Protocol, live: weakref.WeakSet[_Counted]) -> None:
        self._handler = handler
        self._live = live

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._live.discard(self)
        self._handler.connection_lost(exc)


class CappedSite(web.BaseSite):
    """aiohttp's TCP site, holding at most `cap` connections open at once."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, cap: int) -> None:
        super().__init__(runner)
        if cap < 1:
            raise ValueError(f"the connection cap must be at least 1, not {cap}")
        self._host, self._port, self.cap = host, port, cap
        # Weak: a connection whose transport never came up is forgotten, not counted forever.
        self._live: weakref.WeakSet[_Counted] = weakref.WeakSet()
        self._answer = _refusal(cap)

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host, port=self.port))

    @property
    def port(self) -> int:
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    @property
    def open_connections(self) -> int:
        return len(self._live)

    async def start(self) -> None:
        await super().start()
        warn_if_descriptors_run_out_first(self.cap)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self._host, self._port, backlog=self._backlog
        )

    def _protocol(self) -> asyncio.Protocol:
        if len(self._live) >= self.cap:
            return _Refused(self._answer)
        server = self._runner.server
        assert server is not None
        counted = _Counted(server(), self._live)
        self._live.add(counted)
        return counted


def warn_if_descriptors_run_out_first(cap: int) -> None:
    """Say so when the process's descriptor limit is below the cap (plus some to spare)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and cap + SPARE_DESCRIPTORS > soft:
        log.warning(
            "--max-connections %d is close to this process's open-file limit (%d): raise it "
            "(ulimit -n) or lower --max-connections",
            cap,
            soft,
        )
