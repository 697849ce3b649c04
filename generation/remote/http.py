"""Small pieces of the OpenAI-compatible HTTP protocol: Retry-After, model lists, messages."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp


def refusal(server: str, status: int, what: str, detail: str = "") -> str:
    """The message for a request the server refused (not worth retrying), with a hint."""
    hint = {
        401: " Check MUSE_OPENAI_API_KEY.",
        403: " Check MUSE_OPENAI_API_KEY.",
        404: " Check MUSE_OPENAI_BASE_URL (it usually ends in /v1) and MUSE_OPENAI_MODEL.",
    }.get(status, "")
    said = f": {detail.strip()}" if detail.strip() else ""
    return f"{server} refused {what} with HTTP {status}{said}.{hint}"


def retry_after_s(raw: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date); None when absent or bad."""
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def first_model(listed: Any, configured: str) -> str:
    """`configured` if `GET /models` lists it (or lists nothing), else the first listed id."""
    data = listed.get("data") if isinstance(listed, dict) else None
    ids = [str(m["id"]) for m in data or [] if isinstance(m, dict) and m.get("id")]
    return configured if configured in ids or not ids else ids[0]


def describe(exc: BaseException) -> str:
    """A short reason for a failed connection, without the stack."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    return str(exc) or type(exc).__name__
