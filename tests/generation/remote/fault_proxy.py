"""A fault-injecting HTTP proxy on loopback, in front of a real OpenAI-compatible server.

It forwards every request and streams the answer back, except where a queued `Fault` says
otherwise: answer with an error status (and Retry-After), forward slowly, or cut the connection
after some events of a streamed answer. It records what arrived and when, and whether a client
went away before its answer was complete (so tests can see that an abort closed the stream).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from tests.polling import eventually

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding"}


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do to one chat request instead of forwarding it plainly."""

    status: int | None = None  # answer with this status, never reaching the server
    retry_after: str | None = None  # with this Retry-After header
    drop_after_events: int | None = None  # cut the connection after this many SSE events
    delay_per_chunk_s: float = 0.0  # forward the stream slowly: this long before every event


@dataclass(frozen=True, slots=True)
class Seen:
    at: float  # time.monotonic() on arrival
    method: str
    path: str
    status: int  # what the client was answered (200 when forwarded)
    authorization: str  # the Authorization header it came with
    body: bytes = b""  # what it sent


class FaultProxy:
    """`await FaultProxy(upstream).start()`; `faults` are taken one per chat request, then
    `always` (if set) applies to every later one."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")  # e.g. http://127.0.0.1:8000 (no /v1)
        self.faults: list[Fault] = []
        self.always: Fault | None = None
        self.seen: list[Seen] = []
        self.client_gone = 0  # streams the client closed before their end
        self.dropped = 0  # streams the proxy cut on purpose
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def chat_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path.endswith("/chat/completions")]

    def reset(self) -> None:
        self.faults.clear()
        self.always = None
        self.seen.clear()
        self.client_gone = self.dropped = 0

    async def start(self) -> FaultProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        return self

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, condition, timeout_s: float = 10.0) -> bool:
        """Poll `condition()` until true or `timeout_s` passes."""
        return await eventually(condition, timeout_s)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body = await request.read()
        auth = request.headers.get("Authorization", "")
        fault = None
        if request.path.endswith("/chat/completions"):
            fault = self.faults.pop(0) if self.faults else self.always
        if fault is not None and fault.status is not None:
            self.seen.append(Seen(arrived, request.method, request.path, fault.status, auth, body))
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return web.json_response(
                {"error": {"message": f"injected HTTP {fault.status}"}},
                status=fault.status,
                headers=headers,
            )
        self.seen.append(Seen(arrived, request.method, request.path, 200, auth, body))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        assert self._session is not None
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            response.content_type = upstream.content_type
            await response.prepare(request)
            events = 0
            async for received in upstream.content.iter_any():
                # A slow fault delays every event, not every read: the server may hand several
                # events over in one read, and then a "slow" stream would not be slow at all.
                slow = fault is not None and fault.delay_per_chunk_s > 0
                for chunk in _events(received) if slow else [received]:
                    if slow:
                        await asyncio.sleep(fault.delay_per_chunk_s)  # type: ignore[union-attr]
                    if not await self._forward(request, response, chunk, fault, events):
                        return response
                    events += chunk.count(b"data:")
            await response.write_eof()
            return response

    async def _forward(
        self,
        request: web.Request,
        response: web.StreamResponse,
        chunk: bytes,
        fault: Fault | None,
        events: int,
    ) -> bool:
        """Write one piece of the answer; False when the stream ended here (client gone, or cut
        on purpose)."""
        if _closing(request):
            self.client_gone += 1
            return False  # leaving closes the upstream stream: the server stops
        limit = fault.drop_after_events if fault is not None else None
        if limit is not None and events + chunk.count(b"data:") > limit:
            await response.write(_first_events(chunk, limit - events))
            self.dropped += 1
            assert request.transport is not None
            request.transport.abort()  # no end of the chunked body: a broken stream
            return False
        try:
            await response.write(chunk)
        except ConnectionResetError:
            self.client_gone += 1
            return False
        return True


def _closing(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _events(chunk: bytes) -> list[bytes]:
    """`chunk` cut before each SSE event after its first (joined, the pieces are `chunk`)."""
    starts = [0]
    while (found := chunk.find(b"data:", starts[-1] + 1)) > 0:
        starts.append(found)
    return [chunk[a:b] for a, b in zip(starts, [*starts[1:], len(chunk)], strict=True)]


def _first_events(chunk: bytes, count: int) -> bytes:
    """The start of `chunk` holding its first `count` SSE events."""
    start = 0
    for _ in range(max(0, count)):
        found = chunk.find(b"data:", start)
        if found < 0:
            return chunk
        start = found + 5
    end = chunk.find(b"data:", start) if count > 0 else 0
    return chunk[: end if end >= 0 else len(chunk)]
