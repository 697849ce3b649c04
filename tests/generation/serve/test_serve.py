"""`muse serve`'s API with the real engine and the real default model, over loopback HTTP:
the answers' shape, aborting on a closed connection, batching, a full queue, and Muse's own
remote backend (`OpenAIBackend`) as the client, so client and server test each other."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from generation.engine.local_engine import Engine
from generation.errors import EngineBusy, GenerationFailed
from generation.remote.backend import OpenAIBackend, RemoteConfig
from generation.remote.sse import SSEDecoder
from tests.generation.helpers import ask
from tests.generation.serve.serving import Start, servers
from tests.polling import eventually

KEY = "serve-test-key-0d6f"
PROMPT = "Name three colours."
LONG = {"max_tokens": 400, "ignore_eos": True}  # keeps a request decoding while a test acts


def body(text: str = PROMPT, **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "temperature": 0, **fields}


def reference(text: str = PROMPT, **kwargs: Any):
    """The request the server makes of `body(text)`: greedy, OpenAI's defaults otherwise."""
    kwargs = {"max_new_tokens": 12, "temperature": 0.0, "top_p": 1.0, **kwargs}
    return ask(text, repetition_penalty=kwargs.pop("repetition_penalty", 1.0), **kwargs)


@pytest.fixture
async def serve(make_engine) -> AsyncIterator[Start]:
    async with servers(make_engine) as start:
        yield start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session


async def read_events(response: aiohttp.ClientResponse, limit: int | None = None) -> list[Any]:
    """The events' data (JSON decoded; "[DONE]" as is), up to `limit` of them."""
    decoder, events = SSEDecoder(), []
    async for raw in response.content.iter_any():
        for data in decoder.feed(raw):
            events.append(data if data == "[DONE]" else json.loads(data))
            if limit is not None and len(events) >= limit:
                return events
    return events


def content(events: list[Any]) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for event in events
        if isinstance(event, dict)
        for choice in event.get("choices", [])
    )


async def test_a_streamed_answer_is_openai_chunks_then_usage_then_done(make_engine, serve, http):
    engine = make_engine()
    server = await serve(engine)
    alone = await engine.generate(reference())
    url = f"{server.base_url}/chat/completions"
    asked = body(stream=True, max_tokens=12, stream_options={"include_usage": True})
    async with http.post(url, json=asked) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        events = await read_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["model"] for c in chunks} == {engine.model_id}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert content(chunks) == alone.text and len(chunks) > 4
    *_, final, usage_only = chunks
    assert final["choices"][0]["finish_reason"] == alone.finish_reason
    assert final["choices"][0]["delta"] == {}
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    want = {
        "prompt_tokens": alone.tokens_in,
        "completion_tokens": alone.tokens_out,
        "total_tokens": alone.tokens_in + alone.tokens_out,
    }
    assert final["usage"] == want and alone.tokens_in > 0
    assert usage_only["choices"] == [] and usage_only["usage"] == want


async def test_a_whole_answer_is_one_chat_completion(make_engine, serve, http):
    engine = make_engine()
    server = await serve(engine)
    alone = await engine.generate(reference(max_new_tokens=10, ignore_eos=True))
    asked = body(max_completion_tokens=10, max_tokens=999, ignore_eos=True)
    async with http.post(f"{server.base_url}/chat/completions", json=asked) as response:
        assert response.status == 200 and response.content_type == "application/json"
        answer = await response.json()
    assert answer["object"] == "chat.completion" and answer["model"] == engine.model_id
    (choice,) = answer["choices"]
    assert choice["message"] == {"role": "assistant", "content": alone.text}
    assert choice["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 10
    assert answer["usage"]["prompt_tokens"] == alone.tokens_in


async def test_stop_strings_content_parts_and_a_continued_assistant_message(
    make_engine, serve, http
):
    engine = make_engine()
    server = await serve(engine)
    url = f"{server.base_url}/chat/completions"
    free = await engine.generate(reference("Write a sentence about the weather."))
    stop = free.text[8:11]
    parts = [
        {"type": "text", "text": "Write a sentence "},
        {"type": "text", "text": "about the weather."},
    ]
    asked = {"messages": [{"role": "user", "content": parts}], "temperature": 0, "stop": stop}
    async with http.post(url, json={**asked, "max_tokens": 12}) as response:
        answer = await response.json()
    assert answer["choices"][0]["message"]["content"] == free.text[: free.text.find(stop)]
    assert answer["choices"][0]["finish_reason"] == "stop"
    # vLLM's continue_final_message: the answer is what follows the assistant's words.
    prefix = "Once upon a time"
    alone = await engine.generate(reference("Tell me a story.", response_prefix=prefix))
    turns = [
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": prefix},
    ]
    asked = {"messages": turns, "temperature": 0, "max_tokens": 12, "stream": True}
    async with http.post(url, json={**asked, "continue_final_message": True}) as response:
        events = await read_events(response)
    assert prefix + content(events) == alone.text


async def test_models_health_and_model_names(make_engine, serve, http):
    engine = make_engine()
    server = await serve(engine)
    root = server.base_url.removesuffix("/v1")
    async with http.get(f"{root}/health") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok", "model": engine.model_id}
    async with http.get(f"{server.base_url}/models") as response:
        listed = await response.json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == engine.models() == [engine.model_id]
    assert listed["data"][0]["max_model_len"] == engine.context_tokens
    url = f"{server.base_url}/chat/completions"
    async with http.post(url, json=body(model=engine.model_id, max_tokens=2)) as response:
        assert response.status == 200
        assert (await response.json())["model"] == engine.model_id
    async with http.post(url, json=body(model="no-such-model")) as response:
        assert response.status == 404
        error = (await response.json())["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"


async def test_closing_the_connection_aborts_a_running_and_a_waiting_request(
    make_engine, serve, http
):
    engine = make_engine(max_batch=1)
    server = await serve(engine)
    url = f"{server.base_url}/chat/completions"
    running = await http.post(url, json=body(stream=True, **LONG))
    first = await read_events(running, 3)
    waiting = await http.post(url, json=body("Hi", stream=True, **LONG))
    (hello,) = await read_events(waiting, 1)  # headers and the role chunk come at once
    running_id = first[0]["id"].removeprefix("chatcmpl-")
    waiting_id = hello["id"].removeprefix("chatcmpl-")
    assert engine.queue_position(running_id) == 0 and engine.queue_position(waiting_id) == 1
    waiting.close()  # the connection, not just the response
    assert await eventually(lambda: engine.queue_position(waiting_id) is None)
    assert engine.queue_position(running_id) == 0
    running.close()
    assert await eventually(lambda: engine.load() == (0, 0))
    assert engine.queue_position(running_id) is None
    steps = engine.steps
    await asyncio.sleep(0.3)
    assert engine.steps == steps  # nothing decodes for nobody


async def test_a_client_that_leaves_a_whole_answer_aborts_it(make_engine, serve, http):
    engine = make_engine()
    server = await serve(engine)
    url = f"{server.base_url}/chat/completions"
    asking = asyncio.create_task(http.post(url, json=body(**LONG)))
    assert await eventually(lambda: engine.load() == (1, 0) and engine.steps > 2)
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    assert await eventually(lambda: engine.load() == (0, 0), 5.0)
    async with http.post(url, json=body(max_tokens=4)) as response:
        assert response.status == 200


async def test_eight_concurrent_clients_are_decoded_together(make_engine, serve, http):
    engine = make_engine(max_batch=8)
    server = await serve(engine)
    url = f"{server.base_url}/chat/completions"
    prompts = [f"Tell me fact number {n} about the sea." for n in range(8)]

    async def one(text: str) -> list[Any]:
        asked = body(text, stream=True, max_tokens=12, ignore_eos=True, temperature=0.8, seed=7)
        async with http.post(url, json=asked) as response:
            assert response.status == 200
            return await read_events(response)

    answers = await asyncio.gather(*(one(p) for p in prompts))
    for events in answers:
        assert events[-1] == "[DONE]"
        final = events[-2]
        assert final["choices"][0]["finish_reason"] == "length"
        assert final["usage"]["completion_tokens"] == 12 and content(events)
    assert engine.max_rows_seen >= 4


async def test_a_full_queue_is_429_with_retry_after(make_engine, serve, http):
    engine = make_engine(max_batch=1, queue_size=2)
    server = await serve(engine)
    url = f"{server.base_url}/chat/completions"
    held = [await http.post(url, json=body(stream=True, **LONG)) for _ in range(2)]
    for response in held:
        await read_events(response, 1)
    for stream in (True, False):
        async with http.post(url, json=body(stream=stream)) as refused:
            assert refused.status == 429
            assert int(refused.headers["Retry-After"]) >= 1
            error = (await refused.json())["error"]
        assert error["code"] == "rate_limit_exceeded" and "busy" in error["message"]
    for response in held:
        response.close()
    assert await eventually(lambda: engine.load() == (0, 0))
    async with http.post(url, json=body(max_tokens=4)) as response:
        assert response.status == 200


async def test_bad_requests_beside_a_stream_do_not_disturb_it(make_engine, serve, http):
    engine = make_engine()
    server = await serve(engine)
    alone = await engine.generate(reference(max_new_tokens=12))
    url = f"{server.base_url}/chat/completions"
    bad: list[Any] = [
        b"{not json",
        b"[]",
        {"messages": []},
        {"messages": [{"role": "robot", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "\ud800"}]},
        body(temperature=9),
        body(top_p=0),
        body(max_tokens=0),
        body(stop=["a", "b", "c", "d", "e"]),
        body(seed=2**70),
        body(repetition_penalty=0),
        body(n=3),
    ]
    async with http.post(url, json=body(stream=True, max_tokens=12)) as streaming:
        statuses = []
        for item in bad:
            data = item if isinstance(item, bytes) else json.dumps(item)
            async with http.post(url, data=data) as response:
                statuses.append(response.status)
                assert set((await response.json())["error"]) == {"message", "type", "param", "code"}
        events = await read_events(streaming)
    assert all(400 <= status < 500 for status in statuses), statuses
    assert content(events) == alone.text


async def test_35000_messages_are_refused_at_once_while_another_users_stream_flows(
    make_engine, serve, http
):
    engine = make_engine()
    server = await serve(engine)
    url = f"{server.base_url}/chat/completions"
    arrivals: list[float] = []

    async def other_user() -> list[Any]:
        async with http.post(url, json=body(stream=True, **LONG)) as response:
            decoder, events = SSEDecoder(), []
            async for raw in response.content.iter_any():
                arrivals.append(time.monotonic())
                events.extend(decoder.feed(raw))
            return events

    streaming = asyncio.create_task(other_user())
    assert await eventually(lambda: len(arrivals) > 3)
    flood = {"messages": [{"role": "user", "content": ""}] * 35_000, "max_tokens": 4}
    raw = json.dumps(flood, separators=(",", ":")).encode()  # 1 MiB holds them
    started = time.monotonic()
    async with asyncio.timeout(10), http.post(url, data=raw) as response:  # never a hang
        status, error = response.status, (await response.json())["error"]
    refused = time.monotonic()
    assert refused - started < 1.0
    assert status == 400 and error["code"] == "array_above_max_length"
    await asyncio.sleep(0.5)  # the stream goes on beside it, step after step
    during = [t for t in arrivals if t > started - 0.5]
    assert len(during) >= 3 and max(b - a for a, b in itertools.pairwise(during)) < 1.5
    streaming.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await streaming


# -- Muse's own client against the server ------------------------------------------------------
@pytest.fixture
async def client(make_engine, serve) -> AsyncIterator[Callable[..., Any]]:
    clients: list[OpenAIBackend] = []

    async def make(engine: Engine | None = None, **config: Any) -> tuple[OpenAIBackend, Engine]:
        engine = engine or make_engine()
        server = await serve(engine, api_key=KEY)
        config = {"base_url": server.base_url, "api_key": KEY, "prefill": True, **config}
        remote = OpenAIBackend(RemoteConfig(**config))
        clients.append(remote)
        ready = await remote.wait_ready()
        assert ready.model_id == engine.model_id
        return remote, engine

    yield make
    for remote in clients:
        await remote.aclose()


def fresh(request):
    return dataclasses.replace(request, request_id=f"{request.request_id}-again")


async def test_the_remote_backend_streams_what_the_engine_writes(client):
    remote, engine = await client()
    request = ask(PROMPT, max_new_tokens=12, temperature=0.0)
    alone = await engine.generate(request)
    chunks = [c async for c in remote.stream(fresh(request))]
    assert chunks[-1].finished and all(not c.finished for c in chunks[:-1])
    assert "".join(c.delta for c in chunks) == chunks[-1].text == alone.text
    last = chunks[-1]
    assert last.finish_reason == alone.finish_reason
    assert (last.tokens_in, last.tokens_out) == (alone.tokens_in, alone.tokens_out)
    assert last.model_id == engine.model_id


async def test_the_remote_backend_generates_with_a_prefix_and_stops(client):
    remote, engine = await client()
    request = ask("Tell me a story.", response_prefix="Once upon a time", temperature=0.0)
    alone = await engine.generate(request)
    result = await remote.generate(fresh(request))
    assert result.text == alone.text and result.text.startswith("Once upon a time")
    stop = alone.text[22:25]
    stopped = await remote.generate(fresh(dataclasses.replace(request, stop=(stop,))))
    assert stopped.finish_reason == "stop"
    assert stopped.text == alone.text[: alone.text.find(stop)]


async def test_the_remote_backends_abort_retires_the_engines_row(client):
    remote, engine = await client()
    request = ask("Tell me a long story.", max_new_tokens=400, ignore_eos=True)
    stream = remote.stream(request)
    seen = [await anext(stream) for _ in range(3)]
    assert engine.load() == (1, 0)
    remote.abort(request.request_id)
    rest = [c async for c in stream]
    assert rest[-1].finish_reason == "cancelled" and rest[-1].text.startswith(seen[-1].text)
    assert await eventually(lambda: engine.load() == (0, 0), 5.0)


async def test_busy_on_either_side(client, make_engine):
    remote, engine = await client(make_engine(max_batch=1, queue_size=1), queue_size=1)
    long = ask("Tell me a long story.", max_new_tokens=400, ignore_eos=True)
    stream = remote.stream(long)
    await anext(stream)
    with pytest.raises(EngineBusy):  # the client's own bound, at once
        remote.stream(ask("Hi"))
    # A client with room left meets the server's full queue: 429, retried until its timeout.
    other = OpenAIBackend(RemoteConfig(remote.config.base_url, api_key=KEY, backoff_s=0.05))
    try:
        with pytest.raises(GenerationFailed, match="429"):
            await other.generate(ask("Hi", timeout_s=1.0))
    finally:
        await other.aclose()
    remote.abort(long.request_id)
    assert await eventually(lambda: engine.load() == (0, 0), 5.0)
    assert (await remote.generate(ask("Say hello.", max_new_tokens=4))).tokens_out > 0
