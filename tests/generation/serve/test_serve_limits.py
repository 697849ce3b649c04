"""`muse serve` against clients that try to starve it before, or while, they are authenticated:
half-sent request heads, bodies that never arrive, more connections than it holds, more messages
than a prompt needs, key guessing; and what `/health` tells a stranger. Real sockets on 127.0.0.1
with the replaying engine double."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from generation.errors import ModelLoadError
from generation.serve import ServeConfig, ServeConfigError, check_bind
from generation.serve.parse import MAX_MESSAGES
from generation.serve.proof import CHALLENGE_HEADER, health_proof, proves
from tests.bot.fakes import ReplayEngine
from tests.generation.serve.serving import (
    GOOD,
    HALF_HEAD,
    LoadingEngine,
    Start,
    assert_openai_error,
    closed_within,
    connect,
    post,
    servers,
)
from tests.polling import eventually

KEY = "limits-key-4f0b9e2d77"


@pytest.fixture
async def serve() -> AsyncIterator[Start]:
    async with servers(ReplayEngine) as start:
        yield start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def test_a_half_sent_request_head_is_dropped_within_the_timeout_while_others_are_served(
    serve, http
):
    server = await serve(head_timeout_s=1.0)
    opened = time.monotonic()
    idle, idle_writer = await connect(server, HALF_HEAD)
    dripping, drip_writer = await connect(server, HALF_HEAD)

    async def drip() -> None:  # a header line every 0.2 s: bytes keep coming, the head never ends
        for n in range(50):
            drip_writer.write(b"X-Drip-%d: 1\r\n" % n)
            await asyncio.sleep(0.2)

    dripper = asyncio.create_task(drip())
    try:
        status, answer, _ = await post(http, server, GOOD)  # a real client meanwhile
        assert status == 200 and answer["choices"][0]["message"]["content"]
        assert await closed_within(idle, 4.0) == b""
        assert await closed_within(dripping, 4.0) == b""
        assert time.monotonic() - opened < 4.0
    finally:
        dripper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dripper
        idle_writer.close()
        drip_writer.close()
    assert (await post(http, server, GOOD))[0] == 200


async def test_a_body_that_never_arrives_is_a_408_within_the_timeout(serve):
    server = await serve(body_timeout_s=1.0)
    head = HALF_HEAD + b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{"
    reader, writer = await connect(server, head)
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 4.0)
        length = int(head.lower().partition(b"content-length:")[2].split(b"\r\n")[0])
        body = json.loads(await reader.readexactly(length))
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 408")
    assert assert_openai_error(408, body, 408)["code"] == "request_timeout"


async def test_connections_over_the_cap_are_refused_at_once_not_queued(serve, http):
    server = await serve(max_connections=3)
    held = [await connect(server, HALF_HEAD) for _ in range(3)]
    try:
        # Accepted in order by this test's own event loop: these three are in, the next is not.
        reader, writer = await connect(server)
        said = await closed_within(reader, 2.0)
        writer.close()
        head, _, body = said.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head
        error = assert_openai_error(503, json.loads(body), 503)
        assert error["code"] == "too_many_connections" and "3 open connections" in error["message"]
        # An HTTP client is answered (or cut off) at once too, never left waiting.
        started = time.monotonic()
        with contextlib.suppress(aiohttp.ClientConnectionError):
            status, answer, _ = await post(http, server, GOOD)
            assert_openai_error(status, answer, 503)
        assert time.monotonic() - started < 2.0
        assert server.open_connections == 3
    finally:
        for _, held_writer in held:
            held_writer.close()
    assert await eventually(lambda: server.open_connections < 3, 5.0)
    assert (await post(http, server, GOOD))[0] == 200


async def test_35000_messages_are_refused_at_once_and_the_cap_itself_is_served(serve, http):
    server = await serve()
    flood = {"messages": [{"role": "user", "content": ""}] * 35_000, "max_tokens": 4}
    raw = json.dumps(flood, separators=(",", ":")).encode()
    assert len(raw) < ServeConfig().max_body_bytes  # under the body limit: only the count stops it
    started = time.monotonic()
    status, answer, _ = await post(http, server, raw)
    assert time.monotonic() - started < 1.0
    error = assert_openai_error(status, answer, 400)
    assert (error["param"], error["code"]) == ("messages", "array_above_max_length")
    assert "35000" in error["message"] and str(MAX_MESSAGES) in error["message"]
    at_cap = {**flood, "messages": flood["messages"][:MAX_MESSAGES]}
    assert (await post(http, server, at_cap))[0] == 200


async def test_a_wrong_key_is_answered_slowly(serve, http):
    server = await serve(api_key=KEY)
    delay = server.config.unauthorized_delay_s
    assert delay >= 0.25
    for headers in ({}, {"Authorization": "Bearer guess-guess-guess-1"}):
        started = time.monotonic()
        status, answer, _ = await post(http, server, GOOD, headers=headers)
        assert assert_openai_error(status, answer, 401)["code"] == "invalid_api_key"
        assert time.monotonic() - started >= delay * 0.95
    good = {"Authorization": f"Bearer {KEY}"}
    assert (await post(http, server, GOOD, headers=good))[0] == 200


def test_a_key_shorter_than_16_characters_is_refused_at_start():
    for short in ("shortkey-7", "passw0rd!", "x" * 15):
        with pytest.raises(ServeConfigError, match="at least 16") as refused:
            check_bind(ServeConfig(api_key=short))
        assert short not in str(refused.value)
    check_bind(ServeConfig(api_key="x" * 16))
    check_bind(ServeConfig())  # no key on loopback: allowed, as before


async def test_health_hides_the_load_error_from_a_client_without_the_key(serve, http):
    engine = LoadingEngine()
    engine.failure = ModelLoadError("no such model: /home/host/secret/model.gguf")
    engine.loaded.set()
    server = await serve(engine, wait=False, api_key=KEY)
    with pytest.raises(ModelLoadError):
        await server.wait_loaded()
    url = f"{server.base_url.removesuffix('/v1')}/health"
    for headers in ({}, {"Authorization": "Bearer not-the-key-at-all"}):
        async with http.get(url, headers=headers) as response:
            assert response.status == 503
            assert await response.json() == {"status": "failed"}
    async with http.get(url, headers={"Authorization": f"Bearer {KEY}"}) as response:
        assert response.status == 503
        assert "secret/model.gguf" in (await response.json())["error"]


async def test_health_proves_the_key_without_sending_it(serve, http):
    server = await serve(api_key=KEY)
    url = f"{server.base_url.removesuffix('/v1')}/health"
    async with http.get(url, headers={CHALLENGE_HEADER: "nonce-1"}) as response:
        assert response.status == 200
        answer = await response.json()
    assert KEY not in json.dumps(answer)
    assert proves(answer, KEY, "nonce-1") and answer["proof"] == health_proof(KEY, "nonce-1")
    assert not proves(answer, KEY, "nonce-2") and not proves(answer, KEY + "x", "nonce-1")
    assert not proves({"status": "ok"}, KEY, "nonce-1")
    async with http.get(url) as response:
        assert "proof" not in await response.json()  # no challenge, no proof
