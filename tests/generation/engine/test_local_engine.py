"""The engine against the real default model: streaming, cancellation, limits, faults."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

import pytest

from generation.errors import EngineBusy, EngineDead, GenerationFailed
from tests.generation.helpers import ask


async def test_stream_yields_growing_text_then_one_final_chunk(make_engine):
    engine = make_engine()
    chunks = [c async for c in engine.stream(ask("Name three colours.", max_new_tokens=16))]
    assert chunks[-1].finished and all(not c.finished for c in chunks[:-1])
    assert "".join(c.delta for c in chunks) == chunks[-1].text
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.text.startswith(before.text)
    last = chunks[-1]
    assert last.finish_reason in {"stop", "length"}
    assert 0 < last.tokens_out <= 16 and last.tokens_in > 5
    assert last.ttft_ms is not None and last.total_ms >= last.ttft_ms
    assert last.model_id == "SmolLM2-135M-Instruct.Q4_1.gguf"


async def test_same_seed_same_text_and_other_seed_differs(make_engine):
    engine = make_engine()
    prompt = "Write a sentence about a cat."
    a = await engine.generate(ask(prompt, seed=7, max_new_tokens=20, temperature=1.0))
    b = await engine.generate(ask(prompt, seed=7, max_new_tokens=20, temperature=1.0))
    c = await engine.generate(ask(prompt, seed=8, max_new_tokens=20, temperature=1.0))
    assert a.text == b.text
    assert a.text != c.text


async def test_max_new_tokens_is_capped_by_the_engine(make_engine):
    engine = make_engine(max_new_tokens=5)
    # ignore_eos: a sampled end of text within the first five tokens would end it as "stop"
    request = ask("Count from one to fifty.", max_new_tokens=200, ignore_eos=True)
    result = await engine.generate(request)
    assert result.finish_reason == "length" and result.tokens_out == 5


async def test_stop_string_ends_the_text_before_it(make_engine):
    engine = make_engine()
    request = ask("Write a sentence about the weather.", temperature=0.0, max_new_tokens=16)
    free = await engine.generate(request)
    stop = free.text[8:11]  # greedy decoding repeats, so the stop string will appear there
    stopped = await engine.generate(ask(request.messages[0].content, temperature=0.0, stop=(stop,)))
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.find(stop)]


async def test_a_stop_string_keeps_the_response_prefix(make_engine):
    engine = make_engine()
    request = ask("Greet the guild.", temperature=0.0, max_new_tokens=16, response_prefix="Hail,")
    free = await engine.generate(request)
    assert free.text.startswith("Hail,") and len(free.text) > 10
    stop = free.text[len("Hail,") + 3 : len("Hail,") + 6]
    stopped = await engine.generate(replace(request, stop=(stop,), request_id="stopped"))
    assert stopped.finish_reason == "stop" and stopped.text.startswith("Hail,")
    assert stopped.text == free.text[: free.text.find(stop, len("Hail,"))]


async def test_cancelling_the_consumer_aborts_and_the_engine_goes_on(make_engine):
    engine = make_engine()
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
    assert await asyncio.to_thread(engine._wait_idle, 5.0)
    assert len(seen) < 50
    after = await engine.generate(ask("Say hello.", max_new_tokens=4))
    assert after.tokens_out > 0


async def test_abort_by_id_finishes_with_cancelled(make_engine):
    engine = make_engine()
    request = ask("Tell me a long story.", max_new_tokens=300)
    chunks = []
    async for chunk in engine.stream(request):
        chunks.append(chunk)
        if len(chunks) == 2:
            engine.abort(request.request_id)
    assert chunks[-1].finish_reason == "cancelled"
    assert chunks[-1].tokens_out < 300


async def test_timeout_between_steps_keeps_the_text_so_far(make_engine):
    engine = make_engine()
    result = await engine.generate(ask("Write a long essay.", max_new_tokens=400, timeout_s=1.0))
    assert result.finish_reason == "timeout"
    assert 0 < result.tokens_out < 400 and result.text


async def test_full_queue_refuses_at_once_with_a_retry_time(make_engine):
    engine = make_engine(queue_size=2, max_batch=1)
    first = engine.stream(ask("One.", max_new_tokens=30))
    second = engine.stream(ask("Two.", max_new_tokens=30))
    started = time.perf_counter()
    with pytest.raises(EngineBusy) as refused:
        engine.stream(ask("Three."))
    assert time.perf_counter() - started < 0.05
    assert refused.value.retry_after_s >= 1 and "try again in" in str(refused.value)
    for stream in (first, second):
        async for _ in stream:
            pass


async def test_users_take_turns_and_waiting_requests_know_their_place(make_engine):
    gate = threading.Event()
    engine = make_engine(max_batch=1, fault_hook=lambda phase, requests: gate.wait(10))
    order: list[str] = []

    async def run(request, label):
        await engine.generate(request)
        order.append(label)

    burst = [ask(f"Line {i}.", max_new_tokens=4, user_key="alice") for i in range(4)]
    bob = ask("Hi.", max_new_tokens=4, user_key="bob")
    tasks = [asyncio.create_task(run(r, f"alice{i}")) for i, r in enumerate(burst)]
    await asyncio.sleep(0.2)  # alice0 is admitted and held at the gate
    tasks.append(asyncio.create_task(run(bob, "bob")))
    await asyncio.sleep(0.05)
    positions = [engine.queue_position(r.request_id) for r in [*burst, bob]]
    assert positions == [0, 2, 3, 4, 1]  # bob goes before alice's second request
    gate.set()
    await asyncio.gather(*tasks)
    assert order == ["alice0", "bob", "alice1", "alice2", "alice3"]
    assert engine.queue_position(bob.request_id) is None


async def test_an_exception_fails_only_the_request_it_touched(make_engine):
    def fault(phase, requests):
        if phase == "prefill" and any(r.user_key == "cursed" for r in requests):
            raise RuntimeError("injected failure")

    engine = make_engine(fault_hook=fault, max_batch=1)
    good = asyncio.create_task(engine.generate(ask("Hello.", max_new_tokens=8)))
    bad = asyncio.create_task(engine.generate(ask("Hello.", max_new_tokens=8, user_key="cursed")))
    with pytest.raises(GenerationFailed, match="injected failure"):
        await bad
    assert (await good).tokens_out > 0
    assert (await engine.generate(ask("Again.", max_new_tokens=4))).tokens_out > 0


async def test_a_hung_step_trips_the_watchdog(make_engine):
    fatal = threading.Event()
    release = threading.Event()

    def hang(phase, requests):
        if phase == "decode":
            release.wait(10)

    # 2 s: well above a real step on a loaded machine, well below the 10 s hang.
    engine = make_engine(fault_hook=hang, step_timeout_s=2.0, on_fatal=lambda _: fatal.set())
    with pytest.raises(GenerationFailed, match="hung"):
        await engine.generate(ask("Hello.", max_new_tokens=8))
    assert await asyncio.to_thread(fatal.wait, 5)
    with pytest.raises(EngineDead):
        engine.stream(ask("Anyone there?"))
    release.set()


async def test_model_load_failure_reaches_every_waiting_request(loaded):
    from generation.engine.local_engine import Engine
    from generation.errors import ModelLoadError

    def broken():
        raise ModelLoadError("Could not load the model 'nope': missing. Set MUSE_MODEL …")

    engine = Engine(broken).start()
    with pytest.raises(ModelLoadError, match="nope"):
        await engine.wait_ready()
    with pytest.raises(EngineDead, match="failed to load"):
        engine.stream(ask("Hello."))
    await engine.aclose()


async def test_a_prompt_longer_than_the_context_is_cut_not_failed(make_engine, loaded):
    engine = make_engine()
    context = loaded.model.config.max_position_embeddings
    huge = "word " * (context + 500)
    result = await engine.generate(ask(huge + " Now say OK.", max_new_tokens=4))
    assert 0 < result.tokens_in <= context and result.tokens_out > 0
