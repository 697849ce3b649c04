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
    """
    turns = list(messages)
    prefix = (
        tokenizer(response_prefix, add_special_tokens=False)["input_ids"] if response_prefix else []
    )
    budget -= len(prefix)
    while True:
        ids = _render(tokenizer, turns)
        if len(ids) <= budget:
            return ids + prefix
        droppable = [i for i, m in enumerate(turns) if m.role != "system"]
        if len(droppable) > 1:
            del turns[droppable[0]]
            continue
        if not droppable:
            return ids[-budget:] + prefix
        # One turn left: keep its end, leaving room for the template's own tokens.
        last = turns[droppable[0]]
        overflow = len(ids) - budget
        content_ids = tokenizer(last.content, add_special_tokens=False)["input_ids"]
        kept = tokenizer.decode(content_ids[overflow + 8 :], skip_special_tokens=True)
        turns[droppable[0]] = Message(last.role, kept)
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
