"""`muse serve`'s server on a free loopback port, for the serve tests: started on demand, all
closed when the test ends; requests and answers in OpenAI's shape; raw sockets for clients that
misbehave below HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from generation.backend import Backend
from generation.serve import ServeConfig, Server
from tests.bot.fakes import ReplayEngine

Start = Callable[..., Awaitable[Server]]
GOOD = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
ERROR_FIELDS = {"message", "type", "param", "code"}
HALF_HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # no blank line: unfinished
)


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


class LoadingEngine(ReplayEngine):
    """A double whose model is ready (or fails) when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded = asyncio.Event()
        self.failure: Exception | None = None

    async def wait_ready(self):
        await self.loaded.wait()
        if self.failure is not None:
            raise self.failure
        return await super().wait_ready()


async def post(http: aiohttp.ClientSession, server: Server, data: Any, **kwargs: Any):
    """(status, JSON body or None, headers) of a POST /v1/chat/completions of `data`."""
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    url = f"{server.base_url}/chat/completions"
    async with http.post(url, data=raw, **kwargs) as response:
        text = await response.text()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        return response.status, parsed, response.headers


def assert_openai_error(status: int, answer: Any, *allowed: int) -> dict[str, Any]:
    assert status in allowed, (status, answer)
    assert isinstance(answer, dict) and set(answer) == {"error"}, answer
    error = answer["error"]
    assert set(error) == ERROR_FIELDS and isinstance(error["message"], str) and error["message"]
    return error


async def connect(server: Server, send: bytes = b"") -> tuple[asyncio.StreamReader, Any]:
    """A raw TCP connection to `server` that has sent `send`: (reader, writer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    if send:
        writer.write(send)
        await writer.drain()
    return reader, writer


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server sent before it closed the connection; fails the test when it is still
    open after `seconds`."""
    try:
        return await asyncio.wait_for(reader.read(), seconds)
    except ConnectionResetError:
        return b""
    except TimeoutError:
        pytest.fail(f"the server still held the connection open after {seconds} s")
