"""`muse serve`'s API at its edges, over loopback HTTP with the replaying engine double: bad
input (hypothesis over the JSON body), the key, the address rule, loading, the log lines."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generation.errors import ModelLoadError
from generation.serve import ServeConfig, ServeConfigError, Server, check_bind, is_loopback
from generation.serve.parse import parse_chat
from tests.bot.fakes import ReplayEngine
from tests.generation.serve.serving import (
    GOOD,
    LoadingEngine,
    Start,
    assert_openai_error,
    post,
    servers,
)

KEY = "serve-key-7c1e5a9b"


@pytest.fixture
async def serve() -> AsyncIterator[Start]:
    async with servers(ReplayEngine) as start:
        yield start


@pytest.fixture
async def server(serve) -> Server:
    """One server for a whole hypothesis test: every example is sent to it."""
    return await serve()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


# -- bad input -----------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
bad_numbers = st.one_of(
    st.floats(allow_nan=False).filter(lambda x: not 0 <= x <= 2),
    st.integers(max_value=-1),
    st.integers(min_value=3),
)
BAD_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "messages": st.one_of(
        st.just([]),
        st.none().map(lambda _: "hello"),
        st.lists(json_values.filter(lambda v: not isinstance(v, dict)), min_size=1, max_size=3),
        st.text(max_size=8)
        .filter(lambda r: r not in {"system", "developer", "user", "assistant"})
        .map(lambda role: [{"role": role, "content": "hi"}]),
        json_values.filter(lambda v: not isinstance(v, str | list) and v is not None).map(
            lambda c: [{"role": "user", "content": c}]
        ),
        st.just([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        st.just([{"role": "user", "content": "\ud83d"}]),
    ),
    "temperature": bad_numbers | st.text(max_size=4) | st.booleans(),
    "top_p": st.floats(allow_nan=False).filter(lambda x: not 0 < x <= 1) | st.just(0),
    "max_tokens": st.integers(max_value=0) | st.floats() | st.text(max_size=3) | st.booleans(),
    "max_completion_tokens": st.integers(max_value=0) | st.just("64"),
    "seed": st.integers(min_value=2**64) | st.integers(max_value=-(2**63) - 1) | st.just(1.5),
    "stop": st.lists(st.text(max_size=3), min_size=5, max_size=7)
    | st.lists(st.integers(), min_size=1, max_size=2)
    | st.just("x" * 201)
    | st.just(7),
    "stream": st.integers() | st.text(max_size=3),
    "repetition_penalty": st.floats(allow_nan=False).filter(lambda x: not 0.01 <= x <= 2),
    "ignore_eos": st.integers() | st.text(max_size=2),
    "model": st.integers() | st.just("no-such-model") | st.lists(st.text(max_size=3), max_size=2),
    "n": st.integers().filter(lambda n: n != 1),
    "stream_options": st.just({"include_usage": "yes"}) | st.just([1]),
    "continue_final_message": st.just(True) | st.just("yes"),
}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
async def test_a_bad_field_is_a_4xx_openai_error_and_serving_goes_on(server, http, data):
    field = data.draw(st.sampled_from(sorted(BAD_FIELDS)))
    value = data.draw(BAD_FIELDS[field])
    status, answer, _ = await post(http, server, {**GOOD, field: value})
    error = assert_openai_error(status, answer, 400, 404, 422)
    assert error["param"] is None or error["param"].split("[")[0].split(".")[0] == field


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=json_values | st.dictionaries(st.sampled_from(sorted(BAD_FIELDS)), json_values))
async def test_any_json_body_is_answered_never_with_a_5xx(server, http, body):
    status, answer, _ = await post(http, server, body)
    if status != 200:
        assert_openai_error(status, answer, 400, 404, 422)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=64))
async def test_bytes_that_are_not_a_json_object_are_a_400(server, http, raw):
    status, answer, _ = await post(http, server, raw)
    try:
        is_object = isinstance(json.loads(raw), dict)
    except ValueError:
        is_object = False
    if not is_object:
        assert_openai_error(status, answer, 400)


async def test_after_all_that_a_well_formed_request_succeeds(serve, http):
    server = await serve()
    for bad in (b"{", b"[1]", {"messages": "x"}, {**GOOD, "temperature": 1e400}):
        status, answer, _ = await post(http, server, bad)
        assert_openai_error(status, answer, 400, 422)
    status, answer, _ = await post(http, server, GOOD)
    assert status == 200 and answer["choices"][0]["message"]["content"]


async def test_http_level_refusals_are_openai_errors(serve, http):
    server = await serve(max_body_bytes=4096)
    status, answer, _ = await post(http, server, {**GOOD, "padding": "x" * 5000})
    assert assert_openai_error(status, answer, 413)["code"] == "request_too_large"
    async with http.get(f"{server.base_url}/chat/completions") as response:
        error = assert_openai_error(response.status, await response.json(), 405)
        assert "POST" in response.headers["Allow"]
    assert error["code"] == "method_not_allowed"
    async with http.get(f"{server.base_url}/nowhere") as response:
        assert_openai_error(response.status, await response.json(), 404)
    nan = b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    status, answer, _ = await post(http, server, nan)
    assert_openai_error(status, answer, 400)
    status, answer, _ = await post(http, server, GOOD)
    assert status == 200


async def test_a_busy_engine_is_a_429_with_retry_after(serve, http):
    engine = ReplayEngine()
    server = await serve(engine)
    engine.busy_retry_s = 7.2
    for stream in (False, True):
        status, answer, headers = await post(http, server, {**GOOD, "stream": stream})
        assert assert_openai_error(status, answer, 429)["code"] == "rate_limit_exceeded"
        assert headers["Retry-After"] == "8"
    engine.busy_retry_s = None
    assert (await post(http, server, GOOD))[0] == 200


# -- the key, the address --------------------------------------------------------------------
async def test_the_key_is_needed_everywhere_but_health(serve, http, caplog):
    caplog.set_level(logging.DEBUG)
    server = await serve(api_key=KEY)
    root = server.base_url.removesuffix("/v1")
    for headers in ({}, {"Authorization": "Bearer guess-123"}, {"Authorization": KEY}):
        status, answer, _ = await post(http, server, GOOD, headers=headers)
        error = assert_openai_error(status, answer, 401)
        assert error["code"] == "invalid_api_key" and "guess-123" not in error["message"]
        async with http.get(f"{server.base_url}/models", headers=headers) as response:
            assert response.status == 401
    good = {"Authorization": f"Bearer {KEY}"}
    status, answer, _ = await post(http, server, {**GOOD, "stream": True}, headers=good)
    assert status == 200
    async with http.get(f"{server.base_url}/models", headers=good) as response:
        assert response.status == 200
    async with http.get(f"{root}/health") as response:
        assert response.status == 200
    async with http.get(f"{root}/nowhere") as response:
        assert response.status == 401  # unknown paths say nothing without the key
    assert caplog.records and KEY not in caplog.text
    assert KEY not in repr(server.config)


def test_listening_beyond_loopback_needs_a_key():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost", "[::1]"):
        assert is_loopback(host)
        check_bind(ServeConfig(host=host))
    for host in ("0.0.0.0", "::", "192.168.1.20", "muse.example.org"):
        assert not is_loopback(host)
        with pytest.raises(ServeConfigError, match="MUSE_SERVE_API_KEY"):
            check_bind(ServeConfig(host=host))
        check_bind(ServeConfig(host=host, api_key=KEY))


async def test_a_server_beyond_loopback_without_a_key_does_not_start():
    with pytest.raises(ServeConfigError, match="without an API key"):
        await Server(ReplayEngine(), ServeConfig(host="0.0.0.0", port=0)).start()


# -- loading, logging ------------------------------------------------------------------------
async def test_health_is_503_while_loading_then_200(serve, http):
    engine = LoadingEngine()
    server = await serve(engine, wait=False)
    root = server.base_url.removesuffix("/v1")
    async with http.get(f"{root}/health") as response:
        assert response.status == 503 and (await response.json())["status"] == "loading"
    status, answer, headers = await post(http, server, GOOD)
    assert assert_openai_error(status, answer, 503)["code"] == "model_loading"
    assert int(headers["Retry-After"]) >= 1
    engine.loaded.set()
    await server.wait_loaded()
    async with http.get(f"{root}/health") as response:
        assert response.status == 200
    assert (await post(http, server, GOOD))[0] == 200


async def test_a_model_that_fails_to_load_is_said_on_health(serve, http):
    engine = LoadingEngine()
    engine.failure = ModelLoadError("no such model: /nowhere.gguf")
    engine.loaded.set()
    server = await serve(engine, wait=False)
    with pytest.raises(ModelLoadError, match="nowhere"):
        await server.wait_loaded()
    async with http.get(f"{server.base_url.removesuffix('/v1')}/health") as response:
        assert response.status == 503
        assert "nowhere" in (await response.json())["error"]
    status, answer, _ = await post(http, server, GOOD)
    assert assert_openai_error(status, answer, 503)["code"] == "model_load_failed"


async def test_one_log_line_per_request_without_the_prompt(serve, http, caplog):
    caplog.set_level(logging.INFO, logger="muse.generation.serve")
    server = await serve()
    secret_prompt = "my very private prompt"
    asked = {**GOOD, "messages": [{"role": "user", "content": secret_prompt}]}
    assert (await post(http, server, asked))[0] == 200
    assert (await post(http, server, {**asked, "temperature": 5}))[0] == 422
    lines = [r.getMessage() for r in caplog.records if r.name == "muse.generation.serve"]
    requests = [line for line in lines if line.startswith("POST ")]
    assert len(requests) == 2
    assert requests[0].startswith("POST /v1/chat/completions 200 ") and "tokens 10+" in requests[0]
    assert requests[1].startswith("POST /v1/chat/completions 422 ")
    assert secret_prompt not in caplog.text


# -- parsing, without a server ---------------------------------------------------------------
def parse(body: dict[str, Any], **kwargs: Any):
    kwargs = {"max_new_tokens": 64, "timeout_s": 30.0, "request_id": "r1", **kwargs}
    return parse_chat(json.dumps(body).encode(), **kwargs)


def test_parsing_maps_openai_fields_onto_the_request():
    call = parse(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": "Once"},
            ],
            "max_tokens": 500,
            "temperature": 1e-9,
            "top_p": 0.5,
            "seed": 3,
            "stop": "END",
            "repetition_penalty": 1.2,
            "ignore_eos": True,
            "continue_final_message": True,
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "u1",
            "frequency_penalty": 0.3,  # ignored, as OpenAI-compatible servers do
        }
    )
    request = call.request
    assert (call.model, call.stream, call.include_usage) == ("m", True, True)
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "Be brief."),
        ("user", "ab"),
    ]
    assert request.response_prefix == "Once"
    assert request.max_new_tokens == 64  # capped
    assert request.temperature == 0.0  # a temperature this small is greedy
    assert (request.top_p, request.seed, request.stop) == (0.5, 3, ("END",))
    assert (request.repetition_penalty, request.ignore_eos, request.user_key) == (1.2, True, "u1")
    assert (request.timeout_s, request.request_id) == (30.0, "r1")
    plain = parse({"messages": [{"role": "user", "content": "hi"}]}).request
    assert (plain.temperature, plain.top_p, plain.repetition_penalty) == (1.0, 1.0, 1.0)
    assert plain.max_new_tokens == 64 and plain.stop == () and plain.response_prefix == ""
    newer = parse(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 9,
            "max_completion_tokens": 5,
        }
    )
    assert newer.request.max_new_tokens == 5
