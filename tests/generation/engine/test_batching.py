"""Step-level batching: rows join and leave a running batch without changing their text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from generation.engine.sampling import BatchSampler
from generation.errors import GenerationFailed
from generation.model.batch_runner import SPARE_COLUMNS, BatchRunner, GrowingLayer, KVBatch
from generation.model.prompting import encode_messages
from generation.types import GenerationChunk
from tests.generation.helpers import ask, logit_tolerance

PROMPTS = [
    "Write a poem about the sea.",
    "Tell me a very long story about a wizard who lost his hat in the swamp.",
    "Hi",
    "List three fruits.",
]


def greedy(text: str, **kwargs):
    return ask(text, temperature=0.0, **{"max_new_tokens": 16, **kwargs})


def test_rows_joining_and_leaving_match_each_row_alone_at_every_step(loaded):
    runner = BatchRunner(loaded.model, loaded.tokenizer.pad_token_id)
    assert runner.supports_merging
    prompts = [encode_messages(loaded.tokenizer, greedy(p).messages, 4096) for p in PROMPTS[:3]]
    steps = 12

    def alone(ids):
        batch, logits = runner.prefill([ids])
        out = []
        for _ in range(steps):
            out.append(logits[0])
            logits = runner.step(batch, [int(logits[0].argmax())])
        return out

    reference = [alone(ids) for ids in prompts]
    # Row 0 starts alone; row 1 joins after 3 steps, row 2 after 5; each leaves after `steps`.
    joins = {3: 1, 5: 2}
    batch, logits = runner.prefill([prompts[0]])
    rows, seen = [0], {0: [], 1: [], 2: []}
    for step in range(40):
        tokens = []
        for position, row in enumerate(rows):
            seen[row].append(logits[position])
            tokens.append(int(logits[position].argmax()))
        keep = [i for i, row in enumerate(rows) if len(seen[row]) < steps]
        if len(keep) < len(rows):
            batch = batch.keep(keep) if keep else None
            rows, tokens = [rows[i] for i in keep], [tokens[i] for i in keep]
        logits = runner.step(batch, tokens) if rows else torch.empty(0, logits.shape[1])
        if step + 1 in joins:
            new_batch, new_logits = runner.prefill([prompts[joins[step + 1]]])
            batch = batch.merge(new_batch) if rows else new_batch
            logits = torch.cat([logits, new_logits])
            rows.append(joins[step + 1])
        if not rows:
            break
    for row in range(3):
        assert len(seen[row]) == steps
        for got, want in zip(seen[row], reference[row], strict=True):
            assert int(got.argmax()) == int(want.argmax())
            assert (got - want).abs().max() < logit_tolerance(loaded)


async def last_chunk(stream: AsyncIterator[GenerationChunk]) -> GenerationChunk:
    async for chunk in stream:
        last = chunk
    return last


async def test_requests_joining_a_running_batch_give_the_text_they_give_alone(make_engine):
    engine = make_engine(max_batch=4)
    alone = [await engine.generate(greedy(p)) for p in PROMPTS]
    first = engine.stream(greedy(PROMPTS[0]))
    await anext(first)  # the first request is decoding when the others arrive
    rest = [asyncio.create_task(engine.generate(greedy(p))) for p in PROMPTS[1:]]
    together = [await last_chunk(first), *[await task for task in rest]]
    assert [r.text for r in together] == [r.text for r in alone]
    assert engine.max_rows_seen >= 3


async def test_a_newcomer_that_does_not_fit_beside_the_running_rows_waits(make_engine, monkeypatch):
    engine = make_engine(max_batch=4)
    alone = [await engine.generate(greedy(p)) for p in PROMPTS[:2]]
    merge, tripped = KVBatch.merge, []

    def out_of_memory_once(batch: KVBatch, other: KVBatch) -> KVBatch:
        if not tripped:
            tripped.append(other.size)
            raise torch.OutOfMemoryError("injected OOM while joining the batch")
        return merge(batch, other)

    monkeypatch.setattr(KVBatch, "merge", out_of_memory_once)
    first = engine.stream(greedy(PROMPTS[0]))
    await anext(first)
    second = await engine.generate(greedy(PROMPTS[1]))
    assert tripped == [1]
    assert [(await last_chunk(first)).text, second.text] == [r.text for r in alone]


async def test_a_fault_outside_the_model_fails_the_running_rows_and_the_engine_goes_on(
    make_engine, monkeypatch
):
    engine = make_engine(max_batch=4)
    choose = BatchSampler.choose

    def broken(sampler: BatchSampler, logits: torch.Tensor, rows=None) -> list[int]:
        if sampler.size == 2:
            raise RuntimeError("injected sampler bug")
        return choose(sampler, logits, rows)

    monkeypatch.setattr(BatchSampler, "choose", broken)
    pair = [engine.generate(ask(f"{i}.", max_new_tokens=6)) for i in range(2)]
    for outcome in await asyncio.gather(*pair, return_exceptions=True):
        assert isinstance(outcome, GenerationFailed) and "injected sampler bug" in str(outcome)
    assert (await engine.generate(ask("After.", max_new_tokens=6))).tokens_out > 0


async def test_concurrent_requests_are_decoded_together(make_engine):
    engine = make_engine(max_batch=8)
    results = await asyncio.gather(
        *(engine.generate(ask(f"Say {i}.", max_new_tokens=8)) for i in range(8))
    )
    assert all(r.tokens_out > 0 for r in results)
    assert engine.max_rows_seen == 8
    assert engine.steps < 8 * 8  # far fewer steps than decoding one request at a time


async def test_cancelling_one_row_leaves_the_others_untouched(make_engine):
    engine = make_engine(max_batch=4)
    alone = await engine.generate(greedy(PROMPTS[1]))
    victim = greedy(PROMPTS[0], max_new_tokens=200)
    stream = engine.stream(victim)
    survivor = asyncio.create_task(engine.generate(greedy(PROMPTS[1])))
    async for chunk in stream:
        if chunk.tokens_out >= 2:
            engine.abort(victim.request_id)
        last = chunk
    assert last.finish_reason == "cancelled"
    assert (await survivor).text == alone.text


async def test_a_timeout_retires_only_its_row(make_engine):
    engine = make_engine(max_batch=4)
    alone = await engine.generate(greedy(PROMPTS[3]))
    slow = asyncio.create_task(
        engine.generate(greedy(PROMPTS[1], max_new_tokens=400, timeout_s=1.5))
    )
    other = asyncio.create_task(engine.generate(greedy(PROMPTS[3])))
    assert (await slow).finish_reason == "timeout"
    assert (await other).text == alone.text


async def test_an_exception_in_a_step_fails_that_batch_only(make_engine):
    def fault(phase, requests):
        if phase == "decode" and any(r.user_key == "cursed" for r in requests):
            raise RuntimeError("injected step failure")

    engine = make_engine(max_batch=2, fault_hook=fault)
    in_batch = [
        asyncio.create_task(engine.generate(ask("A.", user_key="cursed"))),
        asyncio.create_task(engine.generate(ask("B.", user_key="bystander"))),
    ]
    await asyncio.sleep(0)
    later = asyncio.create_task(engine.generate(ask("C.", user_key="later")))
    for task in in_batch:
        with pytest.raises(GenerationFailed, match="injected step failure"):
            await task
    assert (await later).tokens_out > 0  # it was waiting, not in the failed batch


async def test_out_of_memory_halves_the_batch_and_every_request_still_finishes(make_engine):
    tripped = []

    def oom_once(phase, requests):
        if phase == "decode" and len(requests) == 4 and not tripped:
            tripped.append(len(requests))
            raise torch.OutOfMemoryError("injected OOM")

    engine = make_engine(max_batch=4, fault_hook=oom_once)
    alone = [await engine.generate(greedy(p)) for p in PROMPTS]
    engine.max_rows_seen = 0
    results = await asyncio.gather(*(engine.generate(greedy(p)) for p in PROMPTS))
    assert tripped == [4]
    assert [r.text for r in results] == [r.text for r in alone]  # resumed exactly
    assert engine.max_rows_seen <= 2


def test_a_growing_layer_holds_what_transformers_own_layer_holds_past_its_spare_room():
    ours, theirs = GrowingLayer(), DynamicLayer()
    chunks = [torch.randn(2, 3, width, 4) for width in [5] + [1] * (SPARE_COLUMNS + 3) + [7]]
    for chunk in chunks:  # a prompt, more single steps than the spare room holds, a chunk
        got = ours.update(chunk, -chunk)
        want = theirs.update(chunk, -chunk)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert ours.get_seq_length() == 5 + SPARE_COLUMNS + 3 + 7


def test_batches_joined_at_once_hold_what_merging_them_two_by_two_holds(loaded):
    # A prefill of several groups (prompts with different remembered beginnings) joins its
    # parts at once: merging them two by two held each intermediate batch beside the next.
    runner = BatchRunner(loaded.model, loaded.tokenizer.pad_token_id)
    prompts = [encode_messages(loaded.tokenizer, greedy(p).messages, 4096) for p in PROMPTS[:3]]
    parts = [runner.prefill([ids])[0] for ids in prompts]
    pairwise = parts[0].merge(parts[1]).merge(parts[2])
    joined = KVBatch.joined(parts)
    assert joined.size == 3 and torch.equal(joined.mask, pairwise.mask)
    assert torch.equal(joined.lengths, pairwise.lengths) and joined.slots == pairwise.slots
    for ours, theirs in zip(joined.cache.layers, pairwise.cache.layers, strict=True):
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
    assert KVBatch.joined(parts[:1]) is parts[0]  # one part is the batch itself
