"""Prompt preparation: trimming an over-long conversation takes a logarithmic number of template
renders and keeps what dropping turns one at a time kept; preparing prompts is watched by the
step watchdog; a prompt the template refuses fails its own request only."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

import pytest

from generation.errors import EngineDead, GenerationFailed
from generation.model.loading import LoadedModel
from generation.model.prompting import _render, encode_messages
from generation.types import Message
from tests.generation.helpers import ask


class WatchedTokenizer:
    """The real tokenizer, counting template renders; a turn saying `hang` waits for `release`
    (up to 10 s), one saying `refuse` makes the template raise."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.renders = 0
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer(*args, **kwargs)

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any:
        self.renders += 1
        said = {turn["content"] for turn in conversation}
        if "hang" in said:
            self.release.wait(10)
        if "refuse" in said:
            raise ValueError("the template refuses this conversation")
        return self._tokenizer.apply_chat_template(conversation, **kwargs)


def dropping_one_at_a_time(tokenizer: Any, messages: tuple[Message, ...], budget: int) -> list[int]:
    """What the trim did before it was a search: drop the oldest non-system turn and render
    everything again until it fits, then cut the one turn left."""
    turns = list(messages)
    while True:
        ids = _render(tokenizer, turns)
        if len(ids) <= budget:
            return ids
        droppable = [i for i, m in enumerate(turns) if m.role != "system"]
        if len(droppable) > 1:
            del turns[droppable[0]]
            continue
        if not droppable:
            return ids[-budget:]
        last = turns[droppable[0]]
        content_ids = tokenizer(last.content, add_special_tokens=False)["input_ids"]
        kept = tokenizer.decode(content_ids[len(ids) - budget + 8 :], skip_special_tokens=True)
        turns[droppable[0]] = Message(last.role, kept)
        ids = _render(tokenizer, turns)
        return ids if len(ids) <= budget else ids[-budget:]


def conversation(turns: int, words: int = 3, system: bool = True) -> tuple[Message, ...]:
    said = [
        Message("user" if n % 2 == 0 else "assistant", f"turn {n} " + "word " * (n % 7 * words))
        for n in range(turns)
    ]
    return (Message("system", "Be brief."), *said) if system else tuple(said)


def test_trimming_2048_turns_renders_the_template_a_logarithmic_number_of_times(loaded):
    tokenizer = WatchedTokenizer(loaded.tokenizer)
    messages = tuple(Message("user", "") for _ in range(2048))  # ~10,000 tokens
    ids = encode_messages(tokenizer, messages, 4096)
    assert 4000 < len(ids) <= 4096
    assert tokenizer.renders <= 14  # 1 + log2(2048) + 2; dropping one at a time took ~1,200


@pytest.mark.parametrize(
    ("messages", "budget"),
    [
        (conversation(60), 200),
        (conversation(61, system=False), 150),
        (conversation(9, words=40), 120),  # down to one long turn: its start is cut
        (conversation(1, words=400, system=False), 60),
        ((Message("system", "rule " * 300),), 50),  # only a system prompt: its end is kept
        (conversation(40), 4096),  # fits as it is
        (conversation(5, system=False), 30),
    ],
)
def test_the_search_keeps_what_dropping_one_at_a_time_kept(loaded, messages, budget):
    tokenizer = loaded.tokenizer
    assert encode_messages(tokenizer, messages, budget) == dropping_one_at_a_time(
        tokenizer, messages, budget
    )
    prefix = tokenizer("Once", add_special_tokens=False)["input_ids"]
    with_prefix = encode_messages(tokenizer, messages, budget, "Once")
    assert with_prefix == dropping_one_at_a_time(tokenizer, messages, budget - len(prefix)) + prefix


def watched(loaded: LoadedModel) -> tuple[LoadedModel, WatchedTokenizer]:
    tokenizer = WatchedTokenizer(loaded.tokenizer)
    return dataclasses.replace(loaded, tokenizer=tokenizer), tokenizer


async def test_a_prompt_that_takes_too_long_to_prepare_trips_the_watchdog(make_engine, loaded):
    model, tokenizer = watched(loaded)
    fatal = threading.Event()
    # 2 s: well above preparing a real prompt on a loaded machine, well below the 10 s hang.
    engine = make_engine(model, step_timeout_s=2.0, on_fatal=lambda _: fatal.set())
    try:
        with pytest.raises(GenerationFailed, match="hung"):
            await asyncio.wait_for(engine.generate(ask("hang")), 8)
        assert await asyncio.to_thread(fatal.wait, 5)
        with pytest.raises(EngineDead):
            engine.stream(ask("Anyone there?"))
    finally:
        tokenizer.release.set()


async def test_a_prompt_the_template_refuses_fails_its_own_request_only(make_engine, loaded):
    model, _ = watched(loaded)
    engine = make_engine(model)
    running = engine.stream(ask("Tell me a long story.", max_new_tokens=16, ignore_eos=True))
    first = await anext(running)
    assert not first.finished
    with pytest.raises(GenerationFailed, match="refuses"):
        await engine.generate(ask("refuse"))
    chunks = [first, *[chunk async for chunk in running]]
    assert chunks[-1].finish_reason == "length" and chunks[-1].tokens_out == 16
    assert (await engine.generate(ask("Say hello.", max_new_tokens=4))).tokens_out > 0
