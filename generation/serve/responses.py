"""OpenAI's response objects, built from Muse's chunks (pure functions)."""

from __future__ import annotations

import json
from typing import Any

from generation.types import FinishReason

DONE = b"data: [DONE]\n\n"

# A timed-out text was cut short, as one that reached max_tokens. `cancelled` (shutting down)
# and `error` are answered as errors instead: the text is not what was asked for.
FINISH = {"stop": "stop", "length": "length", "timeout": "length"}


def finish_reason(reason: FinishReason | None) -> str | None:
    return FINISH.get(reason or "")


def usage(tokens_in: int, tokens_out: int) -> dict[str, int]:
    return {
        "prompt_tokens": tokens_in,
        "completion_tokens": tokens_out,
        "total_tokens": tokens_in + tokens_out,
    }


def chunk(
    call_id: str,
    created: int,
    model: str,
    delta: dict[str, str],
    reason: str | None = None,
    tokens: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One `chat.completion.chunk`; `tokens` (usage) goes on the last one."""
    body: dict[str, Any] = {
        "id": call_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
    }
    if tokens is not None:
        body["usage"] = tokens
    return body


def usage_chunk(call_id: str, created: int, model: str, tokens: dict[str, int]) -> dict[str, Any]:
    """The chunk `stream_options.include_usage` asks for: no choices, only `usage`."""
    return {
        "id": call_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": tokens,
    }


def completion(
    call_id: str, created: int, model: str, text: str, reason: str, tokens: dict[str, int]
) -> dict[str, Any]:
    """One `chat.completion` (a request with `stream: false`)."""
    return {
        "id": call_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": reason,
            }
        ],
        "usage": tokens,
    }


def model_list(names: list[str], created: int, context: int | None) -> dict[str, Any]:
    """`GET /v1/models`: the base model first; `max_model_len` as vLLM reports it."""
    cards = []
    for name in names:
        card: dict[str, Any] = {"id": name, "object": "model", "created": created}
        card["owned_by"] = "muse"
        if context:
            card["max_model_len"] = context
        cards.append(card)
    return {"object": "list", "data": cards}


def event(data: dict[str, Any]) -> bytes:
    """One server-sent event."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + text.encode() + b"\n\n"


class Continuation:
    """The answer's text as OpenAI shows it: without `response_prefix` (the words the client
    asked to continue, which the engine's text starts with), and what is new since last time."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.sent = 0

    def content(self, text: str) -> str:
        return text[len(self.prefix) :] if text.startswith(self.prefix) else text

    def delta(self, text: str) -> str:
        content = self.content(text)
        new = content[self.sent :]
        self.sent = max(self.sent, len(content))
        return new
