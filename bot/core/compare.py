"""/compare and /arena: two takes of one prompt, decoded together, then a vote."""

from __future__ import annotations

import logging

from bot.core.app import ActiveRun, Muse
from bot.core.errors import report
from bot.core.limits import Slot
from bot.core.plans import Plan, second_take
from bot.core.policy import Where
from bot.core.records import record, record_failure, remember_messages
from bot.core.run import first_use, open_stream, pump
from bot.core.settle import Settled, settle
from bot.core.surface import CompareSurface
from generation.types import GenerationChunk

log = logging.getLogger("muse.bot.core.compare")

NAMES = ("A", "B")


async def run_compare(
    app: Muse,
    first: Plan,
    where: Where,
    surface: CompareSurface,
    second: Plan | None = None,
    slot: Slot | None = None,
) -> tuple[int, int] | None:
    """Two takes, A = `first` and B = `second` (default: `first` with the next seed), into
    `surface`; the two generation ids, or None when refused or failed."""
    plans = (first, second or second_take(first))
    streams = []
    for plan in plans:
        stream, refusal = open_stream(app, plan.request)
        if stream is None:
            for p in plans:
                app.engine.abort(p.request.request_id)
            await surface.refuse(refusal or "")
            return None
        streams.append(stream)
    ids: list[int] = []
    outcome: tuple[int, int] | None = None
    try:
        message_id = await surface.begin()
        ids = [await record(app, plan, where, message_id) for plan in plans]
        for generation_id, plan in zip(ids, plans, strict=True):  # a shutdown waits for both
            app.active[generation_id] = ActiveRun(plan.request.request_id, where.user_id)
        surface.started(ids)

        async def tick(latest: list[GenerationChunk | None]) -> None:
            await surface.progress(latest)

        finals = await pump(streams, first.blocklist, surface.on_chunk, tick)
        takes: list[Settled] = [
            await settle(app, plan, generation_id, last)
            for plan, generation_id, last in zip(plans, ids, finals, strict=True)
        ]
        shown = await surface.show(takes)
        if slot is not None:
            slot.release()  # shown: the requester may start the next one
        for generation_id in ids:
            await remember_messages(app, generation_id, shown.message_id, [], message_id)
        outcome = (ids[0], ids[1])
    except BaseException as exc:  # every failure ends with a visible answer
        for generation_id in ids:
            await record_failure(app, generation_id, exc)
        if not isinstance(exc, Exception):
            raise
        await surface.fail(report(exc, f"compare {ids}"))
    finally:
        for plan in plans:
            app.engine.abort(plan.request.request_id)
        for generation_id in ids:
            app.active.pop(generation_id, None)
    await first_use(app, where.user_id, surface.notify)
    return outcome


def cut_off(takes: list[Settled] | tuple[Settled, ...]) -> bool:
    """Whether a shutdown cut a take off (then there is nothing finished to vote on)."""
    return any(take.ending == "interrupted" for take in takes)
