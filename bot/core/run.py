"""A generation's life, whatever the front end: open the stream (a full queue is a refusal),
show that work started, record, stream, settle, show; a failure is recorded and shown.

    generation_id = await run(app, plan, where, surface)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from bot.core.app import ActiveRun, Muse
from bot.core.errors import RESTARTING, busy_message, report
from bot.core.limits import Slot
from bot.core.plans import Plan
from bot.core.policy import Where, blocked_by
from bot.core.records import record_failure, record_or_unsaved, remember_messages
from bot.core.settle import settle
from bot.core.surface import Surface
from bot.core.texts import NOTICE
from generation.errors import EngineBusy, EngineDead
from generation.types import GenerationChunk, GenerationRequest

log = logging.getLogger("muse.bot.core.run")

POLL_S = 0.2  # how often a surface is offered the text so far


def open_stream(
    app: Muse, request: GenerationRequest
) -> tuple[AsyncIterator[GenerationChunk] | None, str | None]:
    """Queue the request; (stream, None) or (None, the refusal to show)."""
    if app.stopping:
        return None, RESTARTING
    try:
        return app.engine.stream(request), None
    except EngineBusy as exc:
        return None, busy_message(exc.retry_after_s)
    except EngineDead as exc:
        return None, report(exc, "engine.stream")


async def pump(
    streams: Sequence[AsyncIterator[GenerationChunk]],
    blocklist: tuple[str, ...],
    on_chunk: Callable[[int, GenerationChunk], None],
    tick: Callable[[list[GenerationChunk | None]], Awaitable[None]],
) -> list[GenerationChunk]:
    """Consume every stream to its final chunk (or to a chunk that hits the blocklist: a
    blocked text is never shown, even in part), calling `tick` with the latest chunks every
    `POLL_S` until all are done. A stream that fails ends the wait at once."""
    latest: list[GenerationChunk | None] = [None] * len(streams)

    async def consume(index: int) -> GenerationChunk:
        async for chunk in streams[index]:
            if blocked_by(blocklist, chunk.text):
                return chunk
            latest[index] = chunk
            on_chunk(index, chunk)
            if chunk.finished:
                return chunk
        raise RuntimeError("the stream ended without a final chunk")

    tasks = [asyncio.create_task(consume(i)) for i in range(len(streams))]
    try:
        while not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=POLL_S, return_when=asyncio.ALL_COMPLETED)
            if any(t.done() and not t.cancelled() and t.exception() for t in tasks):
                break
            if not all(t.done() for t in tasks):
                await tick(list(latest))
        return [t.result() for t in tasks]
    finally:
        for t in tasks:
            t.cancel()


async def run(
    app: Muse,
    plan: Plan,
    where: Where,
    surface: Surface,
    *,
    notice: bool = True,
    slot: Slot | None = None,
) -> int | None:
    """Generate `plan` for `where.user_id` into `surface`; the generation id (None when it was
    refused or could not be recorded). `notice`: show the first-use notice through the surface
    (off where it cannot be private: the caller shows it). `slot`: the requester's running
    slot, released as soon as the text is shown (they may start the next one then)."""
    request_id = plan.request.request_id
    stream, refusal = open_stream(app, plan.request)
    if stream is None:
        await surface.refuse(refusal or "")
        return None
    generation_id: int | None = None
    message_id: int | None = None
    try:
        message_id = await surface.begin()  # before any write
        generation_id, unsaved = await record_or_unsaved(app, plan, where, message_id)
        if generation_id is not None:
            app.active[generation_id] = ActiveRun(request_id, where.user_id)
        surface.started(generation_id)

        def tick(latest: list[GenerationChunk | None]) -> Awaitable[None]:
            queued = app.engine.queue_position(request_id) if latest[0] is None else None
            return surface.progress(latest[0], queued)

        (last,) = await pump([stream], plan.blocklist, lambda _, c: surface.on_chunk(c), tick)
    except BaseException as exc:  # every failure ends with a visible answer
        await fail(app, surface, generation_id, exc)
        if not isinstance(exc, Exception):
            raise
    else:
        try:
            settled = await settle(app, plan, generation_id, last, unsaved)
            shown = await surface.show(settled)
            if slot is not None:
                slot.release()
            await remember_messages(
                app, generation_id, shown.message_id, shown.followup_ids, message_id
            )
        except Exception as exc:  # noqa: BLE001 - the row is settled: only show the failure
            await surface.fail(report(exc, f"generation {generation_id}"))
    finally:
        app.engine.abort(request_id)
        if generation_id is not None:
            app.active.pop(generation_id, None)
    if notice:
        await first_use(app, where.user_id, surface.notify)
    return generation_id


async def fail(app: Muse, surface: Surface, generation_id: int | None, exc: BaseException) -> None:
    """Record the failure and show what happened (a cancelled task shows nothing)."""
    await record_failure(app, generation_id, exc)
    if isinstance(exc, Exception):
        await surface.fail(report(exc, f"generation {generation_id}"))


async def first_use(app: Muse, user_id: int, notify: Callable[[str], Awaitable[None]]) -> None:
    """The first-use notice, once per user."""
    text = await first_use_notice(app, user_id)
    if text is not None:
        await notify(text)


async def first_use_notice(app: Muse, user_id: int) -> str | None:
    """The notice when `user_id` has not seen it yet (then marked shown), else None."""
    try:
        return NOTICE if await app.store.mark_notice_shown(user_id) else None
    except Exception as exc:  # noqa: BLE001 - a missing notice must not break a reply
        report(exc, "first-use notice")
        return None
