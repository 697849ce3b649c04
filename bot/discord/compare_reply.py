"""/compare: two takes of one prompt (two seeds, decoded together), as embeds A and B."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import discord

from bot import rendering
from bot.guild_policy import blocked_by, withheld_text
from bot.streaming import (
    NO_MENTIONS,
    POLL_S,
    STATUS_BY_REASON,
    ActiveRun,
    Plan,
    answer_ephemeral,
    fail,
    make_plan,
    maybe_notice,
    open_stream,
    record,
)
from bot.views import compare_view
from generation.presets import PresetError
from generation.requests import finish_text
from generation.types import GenerationChunk

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from bot.client import MuseBot
    from storage.models import GuildSettings

log = logging.getLogger("muse.bot.compare")

EMBED_LIMIT = 2900  # a take's description: both takes and footers within a message's 6,000
NAMES = ("A", "B")


def take_embed(name: str, text: str, footer: str | None = None) -> discord.Embed:
    """One take as an embed titled A or B (masked links shown with their URL)."""
    shown = rendering.show_links(text)
    if len(shown) > EMBED_LIMIT:  # cut: a code block may lose its closing fence
        shown = rendering.unmask_links(text)[: EMBED_LIMIT - 1] + "…"
    embed = discord.Embed(title=name, description=shown or "…")
    if footer:
        embed.set_footer(text=footer.removeprefix("-# "))
    return embed


async def run_compare(
    interaction: discord.Interaction[MuseBot],
    task: str,
    prompt: str,
    guild: GuildSettings | None = None,
) -> None:
    """Two takes with different seeds; A/B/Tie buttons when both finished."""
    bot = interaction.client
    fields = {bot.presets[task].main_field: prompt}
    try:
        first = make_plan(bot, interaction.user.id, task, fields, guild=guild)
    except PresetError as exc:
        await answer_ephemeral(interaction, f"⚠️ {exc}")
        return
    second = replace(
        first,
        request=replace(
            first.request, seed=first.request.seed + 1, request_id=first.request.request_id + "b"
        ),
    )
    plans = (first, second)
    streams = []
    for plan in plans:
        stream, refusal = open_stream(bot, plan.request)
        if stream is None:
            for p in plans:
                bot.engine.abort(p.request.request_id)
            await answer_ephemeral(interaction, refusal or "")
            return
        streams.append(stream)
    ids: list[int] = []
    try:
        await interaction.response.defer(thinking=True)
        ids = [await record(bot, interaction, plan) for plan in plans]
        for generation_id, plan in zip(ids, plans, strict=True):  # a shutdown waits for both
            bot.active[generation_id] = ActiveRun(plan.request.request_id, interaction.user.id)
        finals = await _stream_both(interaction, bot, streams, first.blocklist)
        await _finish(interaction, bot, plans, ids, finals)
    except Exception as exc:  # noqa: BLE001 - every failure ends with a visible answer
        for generation_id in ids[1:]:
            await fail_quietly(bot, generation_id, exc)
        await fail(interaction, bot, ids[0] if ids else None, exc)
    finally:
        for plan in plans:
            bot.engine.abort(plan.request.request_id)
        for generation_id in ids:
            bot.active.pop(generation_id, None)
    await maybe_notice(interaction, bot)


async def fail_quietly(bot: MuseBot, generation_id: int, exc: BaseException) -> None:
    try:
        await bot.store.finish_generation(
            generation_id, "", "error", 0, 0, None, 0.0, status="failed", error=repr(exc)
        )
    except Exception:  # noqa: BLE001
        log.exception("could not record the failure of generation %s", generation_id)


async def _stream_both(
    interaction: discord.Interaction[MuseBot],
    bot: MuseBot,
    streams: list[AsyncIterator[GenerationChunk]],
    blocklist: tuple[str, ...] = (),
) -> list[GenerationChunk]:
    """Consume both streams together, editing the two embeds at most once per interval."""
    latest: list[GenerationChunk | None] = [None, None]

    async def consume(index: int) -> GenerationChunk:
        async for chunk in streams[index]:
            latest[index] = chunk
            if chunk.finished or blocked_by(blocklist, chunk.text):
                return chunk  # a blocked text is never shown, even in part
        raise RuntimeError("the stream ended without a final chunk")

    pumps = [asyncio.create_task(consume(i)) for i in range(2)]
    shown: list[str] = []
    last_edit = 0.0
    try:
        while not all(p.done() for p in pumps):
            await asyncio.wait(pumps, timeout=POLL_S, return_when=asyncio.ALL_COMPLETED)
            if any(p.done() and p.exception() for p in pumps):
                break
            if time.monotonic() - last_edit < bot.edit_interval_s:
                continue
            texts = [rendering.in_progress(c.text if c else "") for c in latest]
            if texts != shown and not all(p.done() for p in pumps):
                last_edit = time.monotonic()
                embeds = [take_embed(n, t) for n, t in zip(NAMES, texts, strict=True)]
                await interaction.edit_original_response(
                    embeds=embeds, allowed_mentions=NO_MENTIONS
                )
                shown = texts
        return [p.result() for p in pumps]
    finally:
        for p in pumps:
            p.cancel()


async def _finish(
    interaction: discord.Interaction[MuseBot],
    bot: MuseBot,
    plans: tuple[Plan, Plan],
    ids: list[int],
    finals: list[GenerationChunk],
) -> None:
    embeds, cut_off = [], False
    for name, plan, generation_id, last in zip(NAMES, plans, ids, finals, strict=True):
        output = finish_text(bot.presets[plan.task], plan.fields, last.text)
        status, error = STATUS_BY_REASON.get(last.finish_reason or "", "failed"), last.error
        run = bot.active.get(generation_id)
        if run is not None and run.interrupted and last.finish_reason == "cancelled":
            status, cut_off = "interrupted", True  # a shutdown cut it off (bot/shutdown.py)
        rule = blocked_by(plan.blocklist, output) or blocked_by(plan.blocklist, last.text)
        if rule is not None:  # withheld: not stored, not shown
            output, status, error = "", "failed", f"withheld: the blocklist {rule!r}"
        await bot.store.finish_generation(
            generation_id,
            output,
            last.finish_reason or "error",
            last.tokens_in,
            last.tokens_out,
            last.ttft_ms,
            last.total_ms or 0.0,
            status=status,
            error=error,
        )
        tail = rendering.footer(last.model_id, last.tokens_out, last.total_ms)
        shown = withheld_text(rule) if rule else output or "*(no text)*"
        embeds.append(take_embed(name, shown, tail))
    message = await interaction.edit_original_response(
        content=rendering.finish_note("interrupted") if cut_off else "Which take is better?",
        embeds=embeds,
        view=None if cut_off else compare_view(ids[0], ids[1]),  # nothing finished to vote on
        allowed_mentions=NO_MENTIONS,
    )
    for generation_id in ids:
        await bot.store.set_message_id(generation_id, message.id)
