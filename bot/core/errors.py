"""Failures shown to users as a short message with an error id; the traceback goes to the log."""

from __future__ import annotations

import logging
import secrets
import sqlite3

from generation.errors import EngineDead, GenerationFailed
from storage.errors import DatabaseUnreachable, StoreClosed

log = logging.getLogger("muse.bot.core.errors")

RESTARTING = "Muse is restarting — try again in a minute."


def new_error_id() -> str:
    """Eight hex characters that tie a user's message to a log line."""
    return secrets.token_hex(4)


def report(exc: BaseException, context: str) -> str:
    """Log `exc` with its traceback under a fresh error id; returns the user-facing message."""
    error_id = new_error_id()
    log.error("error %s in %s", error_id, context, exc_info=exc)
    if isinstance(exc, GenerationFailed) and "out of memory" in str(exc).lower():
        return (
            f"⚠️ The model ran out of memory while writing this (error `{error_id}`). "
            "Try a shorter request, or try again later."
        )
    if isinstance(exc, GenerationFailed):
        return (
            f"⚠️ The model failed while writing this (error `{error_id}`). Please try again later."
        )
    if isinstance(exc, EngineDead):
        return (
            f"⚠️ Muse's model stopped responding and Muse is restarting (error `{error_id}`). "
            "Try again in a minute."
        )
    return f"⚠️ Something went wrong (error `{error_id}`). Please try again later."


def busy_message(retry_after_s: float) -> str:
    """The answer when the queue is full."""
    return f"Muse is busy — try again in {max(1, round(retry_after_s))} s."


def storage_problem(exc: BaseException) -> str | None:
    """What is wrong with the database when `exc` means it cannot be written (read-only,
    full, failing disk, closed), for the footer of a text that could not be saved; else None."""
    if isinstance(exc, StoreClosed):
        return "the database is closed"
    if isinstance(exc, DatabaseUnreachable):
        return "the database server cannot be reached"
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_READONLY or "readonly" in str(exc):
        return "the database is read-only"
    if code == sqlite3.SQLITE_FULL or "full" in str(exc):
        return "the database is full"
    if code == sqlite3.SQLITE_IOERR:
        return "the database's disk failed"
    return "the database could not be written"
