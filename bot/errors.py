"""Failures shown to users as a short message with an error id; the traceback goes to the log."""

from __future__ import annotations

import logging
import secrets

log = logging.getLogger("muse.bot.errors")


def new_error_id() -> str:
    """Eight hex characters that tie a user's message to a log line."""
    return secrets.token_hex(4)


def report(exc: BaseException, context: str) -> str:
    """Log `exc` with its traceback under a fresh error id; returns the user-facing message."""
    error_id = new_error_id()
    log.error("error %s in %s", error_id, context, exc_info=exc)
    return f"⚠️ Something went wrong (error `{error_id}`). Please try again later."


def busy_message(retry_after_s: float) -> str:
    """The answer when the queue is full."""
    return f"Muse is busy — try again in {max(1, round(retry_after_s))} s."
