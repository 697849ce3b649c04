"""Console generations: record, stream to the terminal, finish, then rating keys and votes.

Mirrors `bot/streaming.py`, `bot/actions.py` and `bot/compare.py` (the same plan, the same
store calls, the same row contents), with the console user as the requester and rater.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from bot import rendering
from bot.console_io import Terminal
from bot.console_parse import RATE_KEYS, VOTE_KEYS, Key, parse_rating, parse_vote
from bot.errors import report
from bot.modals import GONE
from bot.settings import Settings
from bot.streaming import NOTICE, Plan, make_plan, open_stream, record_as, settle
from generation.presets import Preset
from generation.requests import finish_text
from generation.types import GenerationChunk, Message
from storage.errors import GenerationGone
from storage.store import Store

log = logging.getLogger("muse.bot.console_generate")

# The console's requester and rater: a local user and "guild" that no Discord id can be
# (snowflakes are positive). `muse export --guild 0` exports the console's rows alone.
CONSOLE_USER_ID = 0
CONSOLE_GUILD_ID = 0
BAD_KEY = "⚠️ keys: u, d, 1–5 (a comment may follow: `4 nice one`), r, s — or a /command"


@dataclass(slots=True)
class Context:
    """What a console generation needs (duck-types as the bot for `make_plan`/`open_stream`)."""

    settings: Settings
    store: Store
    engine: Any
    presets: dict[str, Preset]
    io: Terminal
    ready: asyncio.Task[Any] | None = None
    announced: bool = False

    async def wait_ready(self) -> None:
        """Wait for the model (loaded in the background since start); say which it is once."""
        if self.ready is None:
            self.ready = asyncio.ensure_future(self.engine.wait_ready())
        loaded = await asyncio.shield(self.ready)
        if not self.announced:
            self.announced = True
            self.io.say(f"[{loaded.model_id} on {loaded.device}]")


def plan_for(ctx: Context, task: str, fields: dict[str, Any], **overrides: Any) -> Plan:
    """The bot's plan for the console user; raises `PresetError` for bad fields."""
    return make_plan(ctx, CONSOLE_USER_ID, task, fields, **overrides)  # type: ignore[arg-type]


async def record(ctx: Context, plan: Plan) -> int:
    """The generation's row (status running, written before streaming), as the bot writes it."""
    return await record_as(ctx, plan, CONSOLE_USER_ID, CONSOLE_GUILD_ID, None)  # type: ignore[arg-type]


async def finish(ctx: Context, plan: Plan, generation_id: int, last: GenerationChunk) -> str:
    """Store the result (`bot.streaming.settle`); returns the text as shown and stored."""
    await settle(ctx, plan, generation_id, last)  # type: ignore[arg-type]
    return finish_text(ctx.presets[plan.task], plan.shown_fields, last.text)


async def fail(ctx: Context, generation_id: int | None, exc: BaseException) -> None:
    """Record a failed (or, for Ctrl-C, cancelled) generation."""
    if generation_id is None:
        return
    cancelled = isinstance(exc, asyncio.CancelledError)
    with contextlib.suppress(Exception):
        await ctx.store.finish_generation(
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


async def drain(
    ctx: Context, stream: AsyncIterator[GenerationChunk], echo: bool
) -> GenerationChunk:
    """Consume a stream to its final chunk, printing the deltas when `echo`."""
    async for chunk in stream:
        if echo and chunk.delta:
            ctx.io.write(chunk.delta)
        if chunk.finished:
            if echo:
                ctx.io.say()
            return chunk
    raise RuntimeError("the stream ended without a final chunk")


def show_end(ctx: Context, plan: Plan, output: str, last: GenerationChunk) -> None:
    """The normalised dialogue (when it differs), why it ended early, and the footer."""
    if plan.task == "dialogue" and output != last.text.strip():
        ctx.io.say(f"--- as dialogue ---\n{output}")
    note = rendering.finish_note(last.finish_reason)
    if note:
        ctx.io.say(note)
    ctx.io.say(rendering.footer(last.model_id, last.tokens_out, last.total_ms).removeprefix("-# "))


async def generate(ctx: Context, plan: Plan) -> int | None:
    """Record, stream and finish `plan`; the generation id, or None when it was refused."""
    await ctx.wait_ready()
    stream, refusal = open_stream(ctx, plan.request)  # type: ignore[arg-type]
    if stream is None:
        ctx.io.say(refusal or "")
        return None
    generation_id: int | None = None
    try:
        generation_id = await record(ctx, plan)
        last = await drain(ctx, stream, echo=True)
        output = await finish(ctx, plan, generation_id, last)
        show_end(ctx, plan, output, last)
    except BaseException as exc:
        await fail(ctx, generation_id, exc)
        if not isinstance(exc, Exception):
            raise
        ctx.io.say(report(exc, f"console generation {generation_id}"))
        return None
    finally:
        ctx.engine.abort(plan.request.request_id)
    await notice(ctx)
    return generation_id


async def notice(ctx: Context) -> None:
    """The first-use notice, once per user (the console user is one user)."""
    try:
        if await ctx.store.mark_notice_shown(CONSOLE_USER_ID):
            ctx.io.say(NOTICE)
    except Exception as exc:  # noqa: BLE001 - a missing notice must not break a reply
        report(exc, "first-use notice")


async def keys(ctx: Context, generation_id: int) -> str | None:
    """Rating keys for a generation until skipped; returns a /command typed instead, if any."""
    current = generation_id
    while True:
        line = await ctx.io.read(f"{RATE_KEYS} > ", always=True)
        if line is None:
            return None
        if line.lstrip().startswith("/"):
            return line
        key = parse_rating(line)
        if key is None:
            ctx.io.say(BAD_KEY)
        elif key.action == "skip":
            return None
        elif key.action == "regenerate":
            current = await regenerate(ctx, current) or current
        else:
            await rate(ctx, current, key)


async def rate(ctx: Context, generation_id: int, key: Key) -> None:
    """👍 / 👎 / stars (with an optional comment), as the bot's buttons and modal store them."""
    try:
        if key.action == "stars":
            await ctx.store.record_feedback(
                generation_id, CONSOLE_USER_ID, stars=key.stars, comment=key.comment
            )
            said = "⭐" * (key.stars or 0) + (" and your comment" if key.comment else "")
        else:
            thumbs = "up" if key.action == "up" else "down"
            await ctx.store.record_feedback(generation_id, CONSOLE_USER_ID, thumbs=thumbs)
            said = "👍" if thumbs == "up" else "👎"
    except GenerationGone:
        ctx.io.say(GONE)
        return
    ctx.io.say(f"Thanks — saved {said} for #{generation_id}")


async def regenerate(ctx: Context, generation_id: int) -> int | None:
    """🔁: the parent's messages with a new seed, linked to it (as `bot.actions.regenerate`)."""
    parent = await ctx.store.get_generation(generation_id)
    if parent is None or parent.status == "deleted":
        ctx.io.say("That text was deleted or forgotten.")
        return None
    params = parent.params
    plan = make_plan(
        ctx,  # type: ignore[arg-type]
        CONSOLE_USER_ID,
        parent.task,
        parent.fields,
        parent_id=parent.id,
        temperature=params.get("temperature"),
        max_new_tokens=params.get("max_new_tokens"),
    )
    request = replace(
        plan.request,
        messages=tuple(Message(m["role"], m["content"]) for m in parent.messages),  # type: ignore[arg-type]
        response_prefix=str(params.get("response_prefix") or ""),
    )
    ctx.io.say(f"🔁 a new take of #{parent.id}:")
    return await generate(ctx, replace(plan, request=request))


async def compare(ctx: Context, task: str, prompt: str) -> str | None:
    """Two takes (two seeds, decoded together): A streams, B follows; then a vote."""
    first = plan_for(ctx, task, {ctx.presets[task].main_field: prompt})
    second = replace(
        first,
        request=replace(
            first.request, seed=first.request.seed + 1, request_id=first.request.request_id + "b"
        ),
    )
    plans = (first, second)
    await ctx.wait_ready()
    streams = []
    for plan in plans:
        stream, refusal = open_stream(ctx, plan.request)  # type: ignore[arg-type]
        if stream is None:
            for p in plans:
                ctx.engine.abort(p.request.request_id)
            ctx.io.say(refusal or "")
            return None
        streams.append(stream)
    ids: list[int] = []
    try:
        ids = [await record(ctx, plan) for plan in plans]
        ctx.io.say("A:")
        other = asyncio.ensure_future(drain(ctx, streams[1], echo=False))
        try:
            finals = [await drain(ctx, streams[0], echo=True), await other]
        finally:
            other.cancel()
        for name, plan, generation_id, last in zip("AB", plans, ids, finals, strict=True):
            output = await finish(ctx, plan, generation_id, last)
            if name == "B":
                ctx.io.say(f"B:\n{output}")
            show_end(ctx, plan, output, last)
    except BaseException as exc:
        for generation_id in ids:
            await fail(ctx, generation_id, exc)
        if not isinstance(exc, Exception):
            raise
        ctx.io.say(report(exc, f"console compare {ids}"))
        return None
    finally:
        for plan in plans:
            ctx.engine.abort(plan.request.request_id)
    await notice(ctx)
    return await vote(ctx, prompt, ids[0], ids[1])


async def vote(ctx: Context, prompt: str, generation_a: int, generation_b: int) -> str | None:
    """A / B / tie for a comparison; returns a /command typed instead, if any."""
    while True:
        line = await ctx.io.read(f"{VOTE_KEYS} > ", always=True)
        if line is None:
            return None
        if line.lstrip().startswith("/"):
            return line
        key = parse_vote(line)
        if key is None:
            ctx.io.say("⚠️ keys: a, b, t, s — or a /command")
            continue
        if key.action == "skip":
            return None
        try:
            await ctx.store.record_comparison(
                prompt,
                generation_a,
                generation_b,
                CONSOLE_USER_ID,
                key.action,  # type: ignore[arg-type]
            )
        except GenerationGone:
            ctx.io.say("That comparison was deleted or forgotten.")
            return None
        said = "a tie" if key.action == "tie" else f"{key.action} is better"
        ctx.io.say(f"Thanks — saved ({said})")
        return None
