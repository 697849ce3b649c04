"""A tiny OpenAI-compatible server on 127.0.0.1 that streams a fixed reply.

Only for tests of the processes around the remote backend (sharding, `muse doctor`); the backend
itself is tested against a real llama.cpp server in `tests/generation/`. The reply names the API
key the request came with, so a test can tell which Muse process asked.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

MODEL = "fake-model"


class FakeOpenAI:
    """`GET /v1/models` and streaming `POST /v1/chat/completions`; `requests` records bodies."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []  # (Authorization, body)
        #: While set and not yet open, replies stop after their first word (a stream in flight).
        self.gate: asyncio.Event | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.requests.append((key, body))
        words = ["Once", " upon", " a", " time", f" (answered for {key or 'nobody'})."]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for n, word in enumerate(words):
            await _event(response, {"choices": [{"index": 0, "delta": {"content": word}}]})
            await asyncio.sleep(0.01)
            if n == 0 and self.gate is not None:
                await self.gate.wait()
        await _event(response, {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        usage = {"prompt_tokens": 12, "completion_tokens": len(words)}
        await _event(response, {"choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def _event(response: web.StreamResponse, data: dict[str, Any]) -> None:
    payload = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": MODEL} | data
    await response.write(f"data: {json.dumps(payload)}\n\n".encode())
