"""Prompts starting like a remembered one prefill only the rest and decode as if computed whole."""

from __future__ import annotations

import dataclasses
import json
import uuid

import aiohttp
import pytest
import torch

from generation.engine.local_engine import Engine, EngineConfig
from generation.model.batch_runner import BatchRunner
from generation.model.loading import LoadedModel, with_weights
from generation.model.prefix_cache import PrefixCache
from generation.model.prompting import encode_messages
from generation.remote.sse import SSEDecoder
from generation.types import GenerationRequest, Message
from tests.generation.helpers import logit_tolerance
from tests.generation.serve.serving import servers

SYSTEM = (
    "You are the narrator of a fantasy tavern game. Answer in two short lines of dialogue, "
    "each starting with the speaker's name and a colon, and never break character."
)


def states(tokens: int, value: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two layers of [1, 1, tokens, 2] keys and values (4 bytes each: 16 bytes a token a layer)."""
    block = torch.full((1, 1, tokens, 2), value)
    return [(block, block.clone()), (block.clone(), block.clone())]


def test_the_longest_shared_beginning_is_found_and_never_the_whole_prompt():
    cache = PrefixCache(budget_bytes=10_000, min_tokens=3, min_rest=1)
    cache.add(list(range(10)), states(10))
    cache.add([0, 1, 2, 3, 99], states(5))
    assert cache.match([0, 1, 2, 3, 4, 5, 7]) == (tuple(range(10)), 6)
    assert cache.match(list(range(10))) == (tuple(range(10)), 9)  # the last token is computed
    assert cache.match([0, 1, 7]) == (None, 0)  # too short to be worth it
    assert cache.match([5, 1, 2, 3]) == (None, 0)


def test_a_longer_prompt_replaces_the_one_it_extends_and_the_budget_evicts_the_oldest():
    cache = PrefixCache(
        budget_bytes=32 * 25, min_tokens=2, min_rest=1
    )  # 32 bytes a token: 25 tokens
    cache.add([1, 2, 3], states(3))
    cache.add([1, 2, 3, 4, 5], states(5))
    assert len(cache) == 1
    cache.add([7, 8, 9] * 4, states(12))
    cache.add([4, 4, 4] * 3, states(9))  # 5 + 12 + 9 > 25: the least recently used goes
    assert cache.match([1, 2, 3, 4, 5, 6]) == (None, 0)
    assert cache.match([4, 4, 4, 4, 4]) == ((4, 4, 4) * 3, 4)
    cache.add(list(range(30)), states(30))  # bigger than the whole budget: not kept
    assert cache.match(list(range(31))) == (None, 0)


def test_states_are_the_first_columns_of_the_remembered_prompt():
    cache = PrefixCache(budget_bytes=10_000, min_tokens=1, min_rest=1)
    layers = [(torch.arange(8.0).reshape(1, 1, 4, 2), torch.ones(1, 1, 4, 2))]
    cache.add([5, 6, 7, 8], layers)
    ((keys, values),) = cache.states((5, 6, 7, 8), 2)
    assert keys.tolist() == [[[[0.0, 1.0], [2.0, 3.0]]]]
    assert values.shape == (1, 1, 2, 2)


def prompt(loaded, text: str) -> list[int]:
    return encode_messages(
        loaded.tokenizer, (Message("system", SYSTEM), Message("user", text)), 4096
    )


def greedy_logits(runner: BatchRunner, batch, logits: torch.Tensor, steps: int):
    """Each row's logits for `steps` greedy steps from a prefilled batch."""
    seen = []
    for _ in range(steps):
        seen.append(logits)
        logits = runner.step(batch, logits.argmax(dim=-1).tolist())
    return seen


def test_rows_prefilled_from_a_remembered_beginning_decode_as_if_computed_whole(loaded):
    runner = BatchRunner(loaded.model, loaded.tokenizer.pad_token_id)
    first = prompt(loaded, "The innkeeper greets a tired knight.")
    rest = [prompt(loaded, "A bard asks for a room."), prompt(loaded, "Two orcs argue loudly.")]
    cache = PrefixCache(budget_bytes=2**30, min_rest=1)  # the middle-padded layout
    batch, _ = runner.prefill([first])
    cache.add(first, batch.row_states(0))
    key, shared = cache.match(rest[0])
    assert key == tuple(first) and shared > 40  # the system prompt and the template's start
    assert cache.match(rest[1])[1] == shared

    whole = [greedy_logits(runner, *runner.prefill([seq]), steps=8) for seq in rest]
    # Both together on the shared columns: different rest lengths pad the middle of a row.
    batch, logits = runner.prefill(rest, cache.states(key, shared))
    assert not bool(batch.mask[:, shared:].all())  # the shorter row is padded in its middle
    reused = greedy_logits(runner, batch, logits, steps=8)
    for row in range(2):
        for got, want in zip(reused, whole[row], strict=True):
            assert int(got[row].argmax()) == int(want[0].argmax())
            assert (got[row] - want[0]).abs().max() < logit_tolerance(loaded)


def test_prefill_reusing_groups_rows_by_remembered_beginning_and_keeps_their_order(loaded):
    runner = BatchRunner(loaded.model, loaded.tokenizer.pad_token_id)
    cache = PrefixCache(budget_bytes=2**30)
    known = prompt(loaded, "A blacksmith haggles.")
    cache.add(known, runner.prefill([known])[0].row_states(0))
    stranger = encode_messages(loaded.tokenizer, (Message("user", "Hi"),), 4096)
    sequences = [stranger, prompt(loaded, "A wizard sneezes."), known]
    order, batch, logits = runner.prefill_reusing(sequences, cache)
    assert sorted(order) == [0, 1, 2] and batch.size == 3
    assert cache.hits == 2  # the two that start with the system prompt
    for row, index in enumerate(order):
        _, alone = runner.prefill([sequences[index]])
        assert (logits[row] - alone[0]).abs().max() < logit_tolerance(loaded)
    assert len(cache) == 3  # every prefilled prompt is remembered (the known one, refreshed)


def ask_in_character(text: str) -> GenerationRequest:
    messages = (Message("system", SYSTEM), Message("user", text))
    return GenerationRequest(messages=messages, temperature=0.0, max_new_tokens=16)


async def test_the_engine_reuses_shared_beginnings_and_the_text_is_unchanged(make_engine):
    texts = ["A bard asks for a room.", "Two orcs argue loudly.", "A ghost orders ale."]
    plain = make_engine(max_batch=4, prefix_cache_mb=0)
    caching = make_engine(max_batch=4)
    without = [(await plain.generate(ask_in_character(t))).text for t in texts]
    with_reuse = [(await caching.generate(ask_in_character(t))).text for t in texts]
    assert with_reuse == without
    assert plain.prefixes.hits == 0
    # Short prompts: their last MIN_REST_TOKENS are computed whatever they share.
    assert caching.prefixes.hits == 2 and caching.prefixes.tokens_reused > 60


@pytest.fixture(scope="module", params=["auto", "int8"])
def default_weights(request, loaded: LoadedModel) -> LoadedModel:
    """The weights `MUSE_WEIGHTS=auto` serves the default model with (int4 on the CPU), and
    those it serves other models with there (int8)."""
    return with_weights(loaded, request.param, copy=True)


async def test_a_seeded_request_gives_one_text_remembered_or_not_streamed_or_not(
    default_weights: LoadedModel,
):
    """README: the same seed and prompt give the same text. On the default int4 (and int8)
    weights a prompt computed whole and one whose beginning was remembered round alike, so the same
    sampled request gives one text: first on an idle engine, plain, streamed and plain again
    (each reusing the last one's columns), and after a sibling prompt left its system prompt."""
    request = GenerationRequest(
        messages=(Message("system", SYSTEM), Message("user", "A bard asks for a room.")),
        temperature=1.0,
        top_p=0.95,
        seed=1234,
        max_new_tokens=40,
    )

    def again() -> GenerationRequest:
        return dataclasses.replace(request, request_id=uuid.uuid4().hex)

    engines = []
    try:
        for _ in range(2):
            engines.append(Engine(lambda: default_weights, EngineConfig(max_batch=4)).start())
        first, sibling_first = engines
        plain = (await first.generate(again())).text
        streamed = [chunk async for chunk in first.stream(again())][-1].text
        plain_again = (await first.generate(again())).text
        assert first.prefixes.hits == 2
        sibling = ask_in_character("Two orcs argue loudly.")
        await sibling_first.generate(dataclasses.replace(sibling, max_new_tokens=4))
        after_sibling = (await sibling_first.generate(again())).text
        assert sibling_first.prefixes.hits == 1
    finally:
        for engine in engines:
            await engine.aclose()
    assert plain == streamed == plain_again == after_sibling
    assert len(plain) > 40


async def test_muse_serve_answers_a_seeded_request_with_one_text_plain_or_streamed(
    default_weights: LoadedModel,
):
    """The issue's reproduction: the same seeded chat request to an idle `muse serve`, whole,
    streamed, whole again."""
    asked = {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "A bard asks for a room."},
        ],
        "seed": 77,
        "temperature": 1.0,
        "max_tokens": 40,
    }
    texts = []
    engine = Engine(lambda: default_weights, EngineConfig()).start()
    try:
        async with (
            servers(lambda: engine) as start,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http,
        ):
            url = f"{(await start()).base_url}/chat/completions"
            for stream in (False, True, False):
                async with http.post(url, json={**asked, "stream": stream}) as response:
                    assert response.status == 200
                    texts.append(await (streamed_text if stream else whole_text)(response))
        assert engine.prefixes.hits == 2
    finally:
        await engine.aclose()
    assert texts[0] == texts[1] == texts[2] and len(texts[0]) > 40


async def whole_text(response: aiohttp.ClientResponse) -> str:
    return (await response.json())["choices"][0]["message"]["content"]


async def streamed_text(response: aiohttp.ClientResponse) -> str:
    decoder, deltas = SSEDecoder(), []
    async for raw in response.content.iter_any():
        for data in decoder.feed(raw):
            if data != "[DONE]":
                deltas += [c["delta"].get("content") or "" for c in json.loads(data)["choices"]]
    return "".join(deltas)
