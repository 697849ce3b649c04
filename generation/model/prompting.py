"""Turning chat messages into prompt token ids that fit the model's context."""

from __future__ import annotations

from typing import Any

from generation.types import Message


def encode_messages(
    tokenizer: Any, messages: tuple[Message, ...], budget: int, response_prefix: str = ""
) -> list[int]:
    """Token ids of `messages` through the chat template (then `response_prefix`, the start of
    the answer), at most `budget` long.

    Too long a prompt is never an error: the oldest non-system turns go first, then the start of
    the one turn left is cut, so the system prompt and the newest words always reach the model.
    Finding how many turns go takes O(log n) renders of the template, not one per turn dropped.
    """
    turns = list(messages)
    prefix = (
        tokenizer(response_prefix, add_special_tokens=False)["input_ids"] if response_prefix else []
    )
    budget -= len(prefix)
    ids = _render(tokenizer, turns)
    if len(ids) <= budget:
        return ids + prefix
    droppable = [i for i, m in enumerate(turns) if m.role != "system"]
    if not droppable:
        return ids[-budget:] + prefix
    rendered = {0: ids}

    def without(dropped: int) -> list[Message]:
        """`turns` less the `dropped` oldest droppable ones."""
        gone = set(droppable[:dropped])
        return [m for i, m in enumerate(turns) if i not in gone]

    # The fewest oldest turns to drop so that the rest fits. The prompt only gets shorter as
    # more go, so a binary search finds it; dropping them one by one, re-rendering and
    # re-tokenising all the rest each time, was quadratic (35,000 turns froze the worker).
    low, high = 1, len(droppable) - 1  # dropping `high` leaves one droppable turn
    fits: int | None = None
    while low <= high:
        middle = (low + high) // 2
        rendered[middle] = _render(tokenizer, without(middle))
        if len(rendered[middle]) <= budget:
            fits, high = middle, middle - 1
        else:
            low = middle + 1
    if fits is not None:
        return rendered[fits] + prefix
    # One turn left: keep its end, leaving room for the template's own tokens.
    dropped = len(droppable) - 1
    turns = without(dropped)
    ids = rendered[dropped] if dropped in rendered else _render(tokenizer, turns)
    index = droppable[-1] - dropped  # every dropped turn came before it
    last = turns[index]
    overflow = len(ids) - budget
    content_ids = tokenizer(last.content, add_special_tokens=False)["input_ids"]
    kept = tokenizer.decode(content_ids[overflow + 8 :], skip_special_tokens=True)
    turns[index] = Message(last.role, kept)
    ids = _render(tokenizer, turns)
    return (ids if len(ids) <= budget else ids[-budget:]) + prefix


def _render(tokenizer: Any, turns: list[Message]) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [m.as_dict() for m in turns], add_generation_prompt=True, tokenize=False
        )
    else:  # a base model without a template: plain text, one turn per paragraph
        text = "\n\n".join(m.content for m in turns) + "\n\n"
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
