"""`muse serve`'s runtime-LoRA endpoints (vLLM's `load_lora_adapter` / `unload_lora_adapter`)
over loopback HTTP: a loaded adapter is listed and answers, a bad folder is refused in OpenAI's
shape, the key is required (401 without it, 403 when the server has none), unloading stops
serving it and is refused while a request uses it; Muse's remote backend as the client too."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import torch
from peft import LoraConfig, get_peft_model

from generation.engine.local_engine import Engine
from generation.errors import AdapterError
from generation.model.adapters import RoutedLinear
from generation.model.loading import LoadedModel
from generation.remote.backend import OpenAIBackend, RemoteConfig
from generation.serve import Server
from tests.bot.fakes import ReplayEngine
from tests.generation.helpers import ask
from tests.generation.serve.serving import Start, assert_openai_error, post, servers

KEY = "lora-test-key-4b1e9a"
AUTH = {"Authorization": f"Bearer {KEY}"}
ASK = {"messages": [{"role": "user", "content": "Write a poem about the sea."}], "max_tokens": 10}
GREEDY = {**ASK, "temperature": 0, "repetition_penalty": 1.0}


@pytest.fixture(scope="module")
def base(loaded: LoadedModel) -> LoadedModel:
    """A model of this module's own: adapters are installed into it."""
    return dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))


@pytest.fixture(scope="module")
def folder(base: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT adapter with random (non-trivial) weights, as in
    tests/generation/model/test_adapters.py."""
    root = tmp_path_factory.mktemp("lora") / "x"
    torch.manual_seed(1)
    config = LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(copy.deepcopy(base.model), config).save_pretrained(root)
    return root


@pytest.fixture
async def serve(base: LoadedModel) -> AsyncIterator[Start]:
    engines: list[Engine] = []

    def make() -> Engine:
        engines.append(Engine(lambda: base).start())
        return engines[-1]

    async with servers(make) as start:
        yield start
    for engine in engines:
        await engine.aclose()
    assert not any(isinstance(m, RoutedLinear) for m in base.model.modules())


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session


async def call(
    http: aiohttp.ClientSession, server: Server, path: str, data: Any, headers: Any = AUTH
) -> tuple[int, Any]:
    async with http.post(f"{server.base_url}/{path}", json=data, headers=headers) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def listed(http: aiohttp.ClientSession, server: Server) -> list[str]:
    async with http.get(f"{server.base_url}/models", headers=AUTH) as response:
        return [model["id"] for model in (await response.json())["data"]]


async def test_a_loaded_adapter_is_listed_answers_and_unloads(serve, http, base, folder):
    server = await serve(api_key=KEY)
    status, plain, _ = await post(http, server, GREEDY, headers=AUTH)
    assert status == 200, plain
    status, said = await call(
        http, server, "load_lora_adapter", {"lora_name": "x", "lora_path": str(folder)}
    )
    assert status == 200 and "x" in said, said
    assert await listed(http, server) == [base.model_id, "x"]
    status, tuned, _ = await post(http, server, {**GREEDY, "model": "x"}, headers=AUTH)
    assert status == 200 and tuned["model"] == "x"
    text = tuned["choices"][0]["message"]["content"]
    assert text != plain["choices"][0]["message"]["content"]  # the adapter's own words
    status, again = await call(
        http, server, "load_lora_adapter", {"lora_name": "x", "lora_path": str(folder)}
    )
    assert_openai_error(status, again, 400)

    status, said = await call(http, server, "unload_lora_adapter", {"lora_name": "x"})
    assert status == 200, said
    assert await listed(http, server) == [base.model_id]
    status, gone, _ = await post(http, server, {**GREEDY, "model": "x"}, headers=AUTH)
    assert_openai_error(status, gone, 404)
    assert not any(isinstance(m, RoutedLinear) for m in base.model.modules())  # layers back
    status, after, _ = await post(http, server, GREEDY, headers=AUTH)
    assert after["choices"] == plain["choices"]
    # Loaded again under a new name (the loop's way), it answers as before.
    status, _ = await call(
        http, server, "load_lora_adapter", {"lora_name": "x2", "lora_path": str(folder)}
    )
    status, again, _ = await post(http, server, {**GREEDY, "model": "x2"}, headers=AUTH)
    assert again["choices"][0]["message"]["content"] == text


async def test_an_adapter_answering_a_request_is_not_unloaded(serve, http, folder):
    server = await serve(api_key=KEY)
    await call(http, server, "load_lora_adapter", {"lora_name": "x", "lora_path": str(folder)})
    long = {**ASK, "model": "x", "max_tokens": 300, "ignore_eos": True, "stream": True}
    async with http.post(
        f"{server.base_url}/chat/completions", json=long, headers=AUTH
    ) as streaming:
        await streaming.content.readline()  # it is decoding
        status, refused = await call(http, server, "unload_lora_adapter", {"lora_name": "x"})
        error = assert_openai_error(status, refused, 409)
        assert "answering requests" in error["message"]
    status, unknown = await call(http, server, "unload_lora_adapter", {"lora_name": "nope"})
    assert_openai_error(status, unknown, 404)


@pytest.mark.parametrize("how", ["missing", "empty", "not lora"])
async def test_a_bad_adapter_folder_is_refused_in_openais_shape(serve, http, base, tmp_path, how):
    server = await serve(api_key=KEY)
    path = tmp_path / "adapter"
    if how != "missing":
        path.mkdir()
    if how == "not lora":
        (path / "adapter_config.json").write_text('{"peft_type": "PROMPT_TUNING"}')
    status, answer = await call(
        http, server, "load_lora_adapter", {"lora_name": "bad", "lora_path": str(path)}
    )
    error = assert_openai_error(status, answer, 400)
    assert error["param"] == "lora_path" and "'bad' was refused" in error["message"]
    assert await listed(http, server) == [base.model_id]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key-000000000"}])
async def test_the_lora_endpoints_need_the_key(http, headers):
    async with servers(ReplayEngine) as start:
        server = await start(api_key=KEY, unauthorized_delay_s=0.0)
        for path in ("load_lora_adapter", "unload_lora_adapter"):
            status, answer = await call(
                http, server, path, {"lora_name": "x", "lora_path": "/x"}, headers
            )
            assert_openai_error(status, answer, 401)


async def test_without_a_key_muse_serve_loads_no_adapter_at_run_time(http):
    engine = ReplayEngine()
    async with servers(lambda: engine) as start:
        server = await start()
        for path in ("load_lora_adapter", "unload_lora_adapter"):
            status, answer = await call(
                http, server, path, {"lora_name": "x", "lora_path": "/x"}, {}
            )
            error = assert_openai_error(status, answer, 403)
            assert "MUSE_SERVE_API_KEY" in error["message"]
    assert engine.adapters == []


@pytest.mark.parametrize(
    "body", [{"lora_name": "x"}, {"lora_path": "/x"}, {"lora_name": "", "lora_path": "/x"}, [1]]
)
async def test_a_malformed_load_is_a_400(http, body):
    async with servers(ReplayEngine) as start:
        server = await start(api_key=KEY)
        status, answer = await call(http, server, "load_lora_adapter", body)
        assert_openai_error(status, answer, 400)


async def test_the_remote_backend_loads_and_unloads_through_muse_serve(serve, folder):
    server = await serve(api_key=KEY)
    config = RemoteConfig(base_url=server.base_url, api_key=KEY, runtime_lora=True)
    remote = OpenAIBackend(config)
    try:
        await remote.wait_ready()
        await remote.add_adapter("x", folder)
        assert "x" in remote.models()
        result = await remote.generate(ask("Say hi.", max_new_tokens=4, model="x"))
        assert result.text
        await remote.remove_adapter("x")
        assert "x" not in remote.models()
        with pytest.raises(AdapterError, match="HTTP 400"):
            await remote.add_adapter("y", folder / "missing")
    finally:
        await remote.aclose()
