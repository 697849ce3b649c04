"""An OpenAI chat-completions body as a `GenerationRequest` (pure: bytes in, a call out).

OpenAI's fields (`model`, `messages`, `max_tokens` / `max_completion_tokens`, `temperature`,
`top_p`, `seed`, `stop`, `stream`, `stream_options.include_usage`, `n` = 1, `user`) and vLLM's
extras (`repetition_penalty`, `ignore_eos`, `continue_final_message`). Other fields are ignored,
as OpenAI-compatible servers do. A wrong type or shape is a 400; a value out of range a 422.
Defaults are OpenAI's (temperature 1, top_p 1, no repetition penalty), not Muse's presets'.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from generation.serve.errors import ApiError, bad_request, out_of_range
from generation.types import GenerationRequest, Message

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOPS = 4  # OpenAI's limit
MAX_STOP_CHARS = 200  # each is matched against the text at every step
GREEDY_BELOW = 1e-5  # a smaller temperature would overflow the logits: it means greedy (as vLLM)
PENALTY_RANGE = (0.01, 2.0)
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch's generators take
MAX_USER_CHARS = 256
# OpenAI's own limit. Every turn is rendered and tokenised on the engine's worker thread, so an
# unbounded list (a 1 MiB body holds ~35,000 empty turns) would be work no prompt needs.
MAX_MESSAGES = 2048


@dataclass(frozen=True, slots=True)
class ChatCall:
    """One parsed `POST /v1/chat/completions`."""

    request: GenerationRequest
    model: str | None  # the name asked for; None: the base model
    stream: bool
    include_usage: bool  # `stream_options.include_usage`: a last chunk with only `usage`


def parse_chat(raw: bytes, *, max_new_tokens: int, timeout_s: float, request_id: str) -> ChatCall:
    """The call `raw` asks for; raises `ApiError` (400 / 422) saying which field is wrong."""
    body = _json(raw)
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    model = _optional(body, "model", str)
    if model is not None:
        _utf8(model, "model")
    proceed = _optional(body, "continue_final_message", bool) or False
    messages, prefix = _messages(body.get("messages"), proceed)
    n = _optional(body, "n", int)
    if n is not None and n != 1:
        raise out_of_range("Only n=1 is supported.", "n")
    options = _optional(body, "stream_options", dict) or {}
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad_request("stream_options.include_usage must be a boolean.", "stream_options")
    user = _optional(body, "user", str) or ""
    _utf8(user, "user")
    request = GenerationRequest(
        messages=messages,
        max_new_tokens=min(_max_tokens(body) or max_new_tokens, max_new_tokens),
        temperature=_temperature(body),
        top_p=_number(body, "top_p", 1.0, low=0.0, high=1.0, low_open=True),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, *PENALTY_RANGE),
        stop=_stops(body.get("stop")),
        response_prefix=prefix,
        timeout_s=timeout_s,
        ignore_eos=_optional(body, "ignore_eos", bool) or False,
        user_key=user[:MAX_USER_CHARS],
        request_id=request_id,
        **_seed(body),
    )
    return ChatCall(request, model, _optional(body, "stream", bool) or False, include_usage)


def _json(raw: bytes) -> Any:
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(raw, parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"The request body is not valid JSON: {_short(exc)}") from None


def _messages(value: Any, proceed: bool) -> tuple[tuple[Message, ...], str]:
    """The turns, and the final assistant turn's text when it is to be continued."""
    if not isinstance(value, list) or not value:
        raise bad_request("messages must be a non-empty list of messages.", "messages")
    if len(value) > MAX_MESSAGES:
        raise ApiError(
            400,
            f"messages holds {len(value)} messages; at most {MAX_MESSAGES} are accepted. "
            "Send only the turns the model needs (the newest ones).",
            param="messages",
            code="array_above_max_length",
        )
    turns = [_message(item, index) for index, item in enumerate(value)]
    if not proceed:
        return tuple(turns), ""
    if turns[-1].role != "assistant" or len(turns) < 2:
        raise bad_request(
            "continue_final_message needs a final assistant message after at least one other.",
            "continue_final_message",
        )
    return tuple(turns[:-1]), turns[-1].content


def _message(item: Any, index: int) -> Message:
    param = f"messages[{index}]"
    if not isinstance(item, dict):
        raise bad_request(f"{param} must be an object with a role and content.", param)
    role = item.get("role")
    if not isinstance(role, str) or role not in ROLES:
        roles = ", ".join(ROLES)
        raise bad_request(f"{param}.role must be one of {roles}.", f"{param}.role")
    content = item.get("content")
    if isinstance(content, list):
        parts = enumerate(content)
        content = "".join(_text_part(part, f"{param}.content[{n}]") for n, part in parts)
    elif not isinstance(content, str):
        raise bad_request(
            f"{param}.content must be a string or a list of text parts.", f"{param}.content"
        )
    _utf8(content, f"{param}.content")
    return Message(ROLES[role], content)  # type: ignore[arg-type]


def _text_part(part: Any, param: str) -> str:
    if not isinstance(part, dict) or part.get("type") != "text":
        raise bad_request(f'{param} must be a {{"type": "text", "text": ...}} part.', param)
    text = part.get("text")
    if not isinstance(text, str):
        raise bad_request(f"{param}.text must be a string.", param)
    return text


def _max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):  # OpenAI's newer name wins
        value = _optional(body, name, int)
        if value is not None:
            if value < 1:
                raise out_of_range(f"{name} must be at least 1, not {value}.", name)
            return value
    return None


def _temperature(body: dict[str, Any]) -> float:
    value = _number(body, "temperature", 1.0, 0.0, 2.0)
    return 0.0 if value < GREEDY_BELOW else value


def _number(
    body: dict[str, Any],
    name: str,
    default: float,
    low: float,
    high: float,
    low_open: bool = False,
) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"{name} must be a number.", name)
    try:
        value = float(value)  # 1e400 arrives as inf; a 400-digit integer does not fit
    except OverflowError:
        value = math.nan
    if not (low < value <= high if low_open else low <= value <= high):  # NaN fails both
        bounds = f"{'above' if low_open else 'at least'} {low:g} and at most {high:g}"
        raise out_of_range(f"{name} must be {bounds}.", name)
    return value


def _seed(body: dict[str, Any]) -> dict[str, int]:
    seed = _optional(body, "seed", int)
    if seed is None:
        return {}  # the request draws its own, as Muse records every seed
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise out_of_range("seed must fit in 64 bits.", "seed")
    return {"seed": seed}


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("stop must be a string or a list of strings.", "stop")
    if len(stops) > MAX_STOPS:
        raise out_of_range(f"stop takes at most {MAX_STOPS} strings.", "stop")
    for stop in stops:
        _utf8(stop, "stop")
        if len(stop) > MAX_STOP_CHARS:
            raise out_of_range(f"each stop string is at most {MAX_STOP_CHARS} characters.", "stop")
    return tuple(s for s in stops if s)


def _optional(body: dict[str, Any], name: str, kind: type) -> Any:
    """`body[name]` when present and of `kind` (a bool is not an int), None when absent."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    article = {int: "an integer", bool: "a boolean", str: "a string", dict: "an object"}[kind]
    raise bad_request(f"{name} must be {article}.", name)


def _utf8(text: str, param: str) -> None:
    """Lone surrogates (`"\\ud800"` is valid JSON) cannot reach the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"{param} is not valid Unicode text.", param) from None


def _short(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:200]


__all__ = ["ApiError", "ChatCall", "parse_chat"]
