"""A generation's row: recorded before streaming, finished or failed after, and the messages
that show it remembered. A database that cannot be written never stops a text being shown:
the caller learns what is wrong and says so."""

from __future__ import annotations

import asyncio
import logging

from bot.core.app import Muse
from bot.core.errors import storage_problem
from bot.core.plans import Plan
from bot.core.policy import Where

log = logging.getLogger("muse.bot.core.records")


async def record(app: Muse, plan: Plan, where: Where, message_id: int | None = None) -> int:
    """The generation's row (status running), written before streaming."""
    request = plan.request
    params = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "repetition_penalty": request.repetition_penalty,
        "max_new_tokens": request.max_new_tokens,
        "seed": request.seed,
        "response_prefix": request.response_prefix,
    }
    if plan.persona:
        params["persona"] = plan.persona  # exports carry it in their metadata
    if request.model:
        params["model"] = request.model  # the registered model asked for (a follow-up keeps it)
    return await app.store.record_generation(
        user_id=where.user_id,
        task=plan.task,
        messages=[m.as_dict() for m in request.messages],
        params=params,
        model_id=request.model or app.model_name,
        fields=plan.fields,
        guild_id=where.guild_id,
        channel_id=where.channel_id,
        message_id=message_id,
        parent_id=plan.parent_id,
        conversation_id=plan.conversation_id,
    )


async def record_or_unsaved(
    app: Muse, plan: Plan, where: Where, message_id: int | None
) -> tuple[int | None, str | None]:
    """(generation id, None), or (None, what is wrong) when the database cannot be written:
    the text is then generated and shown anyway, with a footer saying it was not saved."""
    try:
        return await record(app, plan, where, message_id), None
    except Exception as exc:
        problem = storage_problem(exc)
        if problem is None:
            raise
        log.error("could not record a generation (%s): %s; answering unsaved", problem, exc)
        return None, problem


async def record_failure(app: Muse, generation_id: int | None, exc: BaseException) -> None:
    """Mark a generation `failed` with its error (`cancelled` when its task was cancelled, and
    left `running` when a shutdown cut it off: the next start marks it interrupted); a store
    that fails too is only logged."""
    if generation_id is None:
        return
    run = app.active.get(generation_id)
    cancelled = isinstance(exc, asyncio.CancelledError)
    if cancelled and run is not None and run.interrupted:
        return
    try:
        await app.store.finish_generation(
            generation_id,
            "",
            "cancelled" if cancelled else "error",
            0,
            0,
            None,
            0.0,
            status="cancelled" if cancelled else "failed",
            error=None if cancelled else repr(exc),
        )
    except Exception:  # noqa: BLE001 - the store may be the thing that failed
        log.exception("could not record the failure of generation %s", generation_id)


async def remember_messages(
    app: Muse,
    generation_id: int | None,
    message_id: int | None,
    followup_ids: list[int],
    recorded_id: int | None = None,
) -> None:
    """Which messages show a generation (🗑 deletes them all, a restart edits the first),
    tolerating a database that cannot be written (logged). `recorded_id`: the message id
    the row already holds (not written again)."""
    if generation_id is None:
        return
    try:
        if message_id is not None and message_id != recorded_id:
            await app.store.set_message_id(generation_id, message_id)
        if followup_ids:
            await app.store.set_followup_message_ids(generation_id, followup_ids)
    except Exception as exc:
        problem = storage_problem(exc)
        if problem is None:
            raise
        log.error("could not store the messages of generation %s (%s)", generation_id, problem)
