"""The remote backend against a real OpenAI-compatible server (llama-cpp-python's, serving the
default GGUF on loopback), with a fault-injecting proxy in front of it for what it never does."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from benchmarks.llama_cpp_server import LlamaServer
from bot.cli.engine_process import free_port
from bot.cli.wiring import build_backend
from bot.core.settings import Settings
from generation.errors import EngineBusy, GenerationFailed, ModelLoadError
from generation.remote.backend import OpenAIBackend, RemoteConfig
from generation.tasks.presets import load_presets
from generation.tasks.task_rules import build_request, finish_text
from tests.generation.helpers import ask
from tests.generation.remote.fault_proxy import Fault, FaultProxy

KEY = "sk-test-secret-4242"
SLOW = Fault(delay_per_chunk_s=0.05)  # keeps a long answer streaming while a test acts on it


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaServer]:
    with LlamaServer() as server:
        yield server


@pytest.fixture(scope="session")
async def proxy(llama_server: LlamaServer) -> AsyncIterator[FaultProxy]:
    proxy = await FaultProxy(llama_server.base_url.removesuffix("/v1")).start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def make_remote(proxy: FaultProxy) -> AsyncIterator[Callable[..., OpenAIBackend]]:
    proxy.reset()
    engines: list[OpenAIBackend] = []

    def make(**kwargs) -> OpenAIBackend:
        kwargs.setdefault("base_url", proxy.base_url)
        kwargs.setdefault("api_key", KEY)
        kwargs.setdefault("backoff_s", 0.05)
        engine = OpenAIBackend(RemoteConfig(**kwargs))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.aclose()
    proxy.reset()


async def first_chunks(stream: AsyncIterator, count: int) -> list:
    chunks = []
    async for chunk in stream:
        chunks.append(chunk)
        if len(chunks) == count:
            break
    return chunks


async def test_stream_yields_growing_text_then_one_final_chunk(make_remote, llama_server, proxy):
    engine = make_remote()
    request = ask("Name three colours.", max_new_tokens=24, temperature=0.0)
    chunks = [c async for c in engine.stream(request)]
    assert chunks[-1].finished and all(not c.finished for c in chunks[:-1])
    assert len(chunks) > 2
    assert "".join(c.delta for c in chunks) == chunks[-1].text
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.text.startswith(before.text)
    last = chunks[-1]
    assert last.finish_reason in {"stop", "length"} and last.text.strip()
    # llama-cpp-python sends no `usage` when streaming: the deltas are counted (one a token).
    assert 0 < last.tokens_out <= 24 and last.tokens_in == 0
    assert last.ttft_ms is not None and last.total_ms >= last.ttft_ms
    assert last.model_id == llama_server.models()[0]
    assert [s.authorization for s in proxy.chat_requests()] == [f"Bearer {KEY}"]


async def test_max_tokens_ends_with_length(make_remote):
    engine = make_remote(max_new_tokens=5)
    request = ask("Count from one to fifty.", max_new_tokens=200, temperature=0.0)
    result = await engine.generate(request)
    assert result.finish_reason == "length" and result.tokens_out == 5


async def test_stop_strings_end_the_text_before_them(make_remote):
    engine = make_remote()
    prompt = "Write a sentence about the weather."
    free = await engine.generate(ask(prompt, temperature=0.0, max_new_tokens=16))
    stop = free.text[8:11]
    stopped = await engine.generate(ask(prompt, temperature=0.0, stop=(stop,)))
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.find(stop)]
    # Only four are sent (OpenAI's limit); a fifth is enforced on Muse's side.
    many = ("@@1", "@@2", "@@3", "@@4", stop)
    cut = await engine.generate(ask(prompt, temperature=0.0, stop=many))
    assert cut.finish_reason == "stop" and cut.text == stopped.text


async def test_cancelling_the_consumer_closes_the_stream(make_remote, proxy):
    engine = make_remote()
    proxy.always = SLOW
    request = ask("Tell me a long story about the sea.", max_new_tokens=200)
    seen = []
    streaming = asyncio.Event()

    async def consume():
        async for chunk in engine.stream(request):
            seen.append(chunk)
            if len(seen) == 3:
                streaming.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(streaming.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await proxy.wait_for(lambda: proxy.client_gone == 1, 5)
    assert engine.load() == (0, 0) and engine.queue_position(request.request_id) is None
    proxy.always = None
    after = await engine.generate(ask("Say hello.", max_new_tokens=4))
    assert after.tokens_out > 0


async def test_abort_by_id_finishes_with_cancelled_and_the_text_so_far(make_remote, proxy):
    engine = make_remote()
    proxy.always = SLOW
    request = ask("Tell me a long story.", max_new_tokens=200)
    stream = engine.stream(request)
    assert engine.queue_position(request.request_id) == 0  # in flight: the server queues
    chunks = await first_chunks(stream, 3)
    engine.abort(request.request_id)
    rest = [c async for c in stream]
    assert rest[-1].finished and rest[-1].finish_reason == "cancelled"
    assert rest[-1].text.startswith(chunks[-1].text) and chunks[-1].text
    assert await proxy.wait_for(lambda: proxy.client_gone == 1, 5)


async def test_timeout_ends_with_timeout_and_the_text_so_far(make_remote, proxy):
    engine = make_remote()
    proxy.always = Fault(delay_per_chunk_s=0.1)
    started = time.monotonic()
    # 0.1 s before every event (not every read: the server may send a story's events in one):
    # a greedy story of more than ten tokens outlasts the 1 s timeout on every run. ignore_eos
    # is for servers that know it; llama-cpp-python's does not.
    request = ask(
        "Tell me a long story.", max_new_tokens=200, timeout_s=1.0, temperature=0.0, ignore_eos=True
    )
    result = await engine.generate(request)
    assert result.finish_reason == "timeout" and result.text
    assert 0.9 < time.monotonic() - started < 2.0


async def test_429_is_retried_after_the_servers_retry_after(make_remote, proxy):
    engine = make_remote()
    proxy.faults = [Fault(status=429, retry_after="1")]
    result = await engine.generate(ask("Say hello.", max_new_tokens=6))
    assert result.finish_reason in {"stop", "length"} and result.text
    first, second = proxy.chat_requests()
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.95  # not the 0.05 s backoff: Retry-After wins


async def test_503_twice_then_success(make_remote, proxy):
    engine = make_remote()
    proxy.faults = [Fault(status=503), Fault(status=503)]
    result = await engine.generate(ask("Say hello.", max_new_tokens=6))
    assert result.text and result.finish_reason in {"stop", "length"}
    assert [s.status for s in proxy.chat_requests()] == [503, 503, 200]


async def test_persistent_500_fails_clearly_within_the_timeout(make_remote, proxy, caplog):
    engine = make_remote()
    proxy.always = Fault(status=500)
    started = time.monotonic()
    with (
        caplog.at_level(logging.DEBUG, logger="muse"),
        pytest.raises(GenerationFailed) as failed,
    ):
        await engine.generate(ask("Say hello.", max_new_tokens=6, timeout_s=2.0))
    assert time.monotonic() - started < 2.0
    message = str(failed.value)
    assert proxy.base_url in message and "HTTP 500" in message
    assert len(proxy.chat_requests()) >= 3  # retried with backoff first
    assert KEY not in message and KEY not in caplog.text
    assert engine.load() == (0, 0)


async def test_connection_refused_fails_clearly(make_remote):
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    engine = make_remote(base_url=nowhere, ready_timeout_s=0.5)
    with pytest.raises(GenerationFailed, match="cannot connect") as failed:
        await engine.generate(ask("Say hello.", max_new_tokens=6, timeout_s=1.0))
    assert nowhere in str(failed.value) and KEY not in str(failed.value)
    with pytest.raises(ModelLoadError, match="not answering"):
        await engine.wait_ready()


async def test_stream_dropped_mid_response_fails_and_is_not_retried(make_remote, proxy):
    engine = make_remote()
    proxy.faults = [Fault(drop_after_events=6)]
    request = ask("Tell me a long story.", max_new_tokens=100)
    chunks = []
    with pytest.raises(GenerationFailed, match="broke after"):
        async for chunk in engine.stream(request):
            chunks.append(chunk)
    assert chunks and not any(c.finished for c in chunks)  # text was shown, never "finished"
    assert proxy.dropped == 1 and len(proxy.chat_requests()) == 1


async def test_stream_dropped_before_any_text_is_retried(make_remote, proxy):
    engine = make_remote()
    proxy.faults = [Fault(drop_after_events=0)]
    result = await engine.generate(ask("Say hello.", max_new_tokens=6))
    assert result.text and proxy.dropped == 1 and len(proxy.chat_requests()) == 2


async def test_queue_full_is_refused_at_once(make_remote, proxy):
    engine = make_remote(queue_size=2)
    proxy.always = SLOW
    requests = [ask("Tell me a story.", max_new_tokens=100) for _ in range(2)]
    streams = [engine.stream(request) for request in requests]
    with pytest.raises(EngineBusy) as busy:
        engine.stream(ask("One more."))
    assert busy.value.retry_after_s >= 1
    assert engine.load() == (2, 0)
    for request in requests:
        engine.abort(request.request_id)
    assert await proxy.wait_for(lambda: engine.load() == (0, 0), 5)
    assert [(await anext(stream)).finish_reason for stream in streams] == ["cancelled"] * 2
    more = await engine.generate(ask("Say hello.", max_new_tokens=4))
    assert more.tokens_out > 0


async def test_model_id_is_what_the_server_reports(make_remote, llama_server, proxy):
    engine = make_remote()
    assert engine.model_id == ""
    ready = await engine.wait_ready()
    assert ready.model_id == engine.model_id == llama_server.models()[0]
    assert ready.device == proxy.base_url
    configured = make_remote(model=llama_server.models()[0])
    assert configured.model_id == llama_server.models()[0]


async def test_a_requests_model_is_sent_as_the_apis_model(make_remote, llama_server, proxy):
    engine = make_remote()
    await engine.wait_ready()
    served = llama_server.models()
    assert engine.models() == served
    plain = await engine.generate(ask("Say hello.", max_new_tokens=2))
    named = await engine.generate(ask("Say hello.", max_new_tokens=2, model="muse-adapter"))
    sent = [json.loads(seen.body)["model"] for seen in proxy.chat_requests()]
    assert sent == [served[0], "muse-adapter"]
    # llama-cpp-python serves its one model whatever is asked, under the name asked for; that
    # name is the adapter's, never taken for the base model's.
    assert plain.model_id == served[0] and named.model_id == "muse-adapter"
    assert engine.model_id == served[0]


async def test_dialogue_preset_starts_with_the_first_character(make_remote):
    engine = make_remote()
    preset = load_presets()["dialogue"]
    fields = {"scene": "a tavern at night", "characters": "Innkeeper, Stranger", "lines": 3}
    request = build_request(preset, fields, seed=3)
    assert request.response_prefix == "Innkeeper:"
    result = await engine.generate(request)
    shown = finish_text(preset, fields, result.text)
    assert shown.startswith("Innkeeper:"), result.text
    assert not result.text.startswith("Innkeeper:Innkeeper:")


async def test_build_backend_makes_the_remote_backend(monkeypatch, proxy):
    monkeypatch.setenv("MUSE_BACKEND", "openai")
    monkeypatch.setenv("MUSE_OPENAI_BASE_URL", proxy.base_url)
    monkeypatch.setenv("MUSE_OPENAI_API_KEY", KEY)
    monkeypatch.setenv("MUSE_OPENAI_MODEL", "served-model")
    monkeypatch.setenv("MUSE_QUEUE_SIZE", "3")
    engine = build_backend(Settings.load(env_file=None))
    try:
        assert isinstance(engine, OpenAIBackend)
        assert engine.config.queue_size == 3 and engine.config.api_key == KEY
        assert engine.model_id == "served-model"
        assert KEY not in repr(engine.config)
    finally:
        await engine.aclose()
