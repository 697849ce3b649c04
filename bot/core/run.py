"""One generation from a Discord interaction: defer, record, stream edits, finish, buttons.

The reply is the interaction's original response (a slash command's, or a button's new
"thinking…" message); text beyond one message continues in follow-ups.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import discord

from bot import rendering
from bot.delivery import deliver, token_gone
from bot.errors import RESTARTING, busy_message, report, storage_problem
from bot.guild_policy import blocked_by, withheld_text
from bot.splitting import split_message
from generation.errors import EngineBusy, EngineDead
from generation.presets import Preset
from generation.requests import build_request, finish_text
from generation.types import GenerationChunk, GenerationRequest

if TYPE_CHECKING:
    from bot.client import MuseBot
    from storage.models import GuildSettings

log = logging.getLogger("muse.bot.streaming")

NO_MENTIONS = discord.AllowedMentions.none()
EDIT_INTERVAL_S = 1.2
POLL_S = 0.2
STATUS_BY_REASON = {"stop": "done", "length": "done", "cancelled": "cancelled"}


@dataclass(frozen=True, slots=True)
class Plan:
    """What to generate: the task, its fields, the request, and the generation it follows."""

    task: str
    fields: dict[str, Any]
    request: GenerationRequest
    parent_id: int | None = None
    finish_fields: dict[str, Any] = field(default_factory=dict)
    conversation_id: int | None = None
    blocklist: tuple[str, ...] = ()  # the guild's: an output that hits it is withheld

    @property
    def shown_fields(self) -> dict[str, Any]:
        return self.finish_fields or self.fields


@dataclass(slots=True)
class ActiveRun:
    """A generation being streamed (⏹ needs its request id and requester)."""

    request_id: str
    user_id: int
    interrupted: bool = False  # cut off by a shutdown: stored `interrupted`, reply says so


def make_plan(
    bot: MuseBot,
    user_id: int,
    task: str,
    fields: dict[str, Any],
    parent_id: int | None = None,
    *,
    guild: GuildSettings | None = None,
    **overrides: Any,
) -> Plan:
    """A plan from a preset (the guild's temperature / max_tokens as defaults); raises
    `PresetError` for bad fields."""
    preset: Preset = bot.presets[task]
    if guild is not None:
        if overrides.get("temperature") is None and guild.temperature is not None:
            overrides["temperature"] = guild.temperature
        if overrides.get("max_new_tokens") is None and guild.max_tokens:
            overrides["max_new_tokens"] = guild.max_tokens
    preset.resolve(fields)
    request = build_request(
        preset, fields, timeout_s=bot.settings.timeout_s, user_key=str(user_id), **overrides
    )
    if request.max_new_tokens > bot.settings.max_tokens:
        request = replace(request, max_new_tokens=bot.settings.max_tokens)
    return Plan(task, fields, request, parent_id, blocklist=guild.blocklist if guild else ())


async def answer_ephemeral(interaction: discord.Interaction, text: str, **kwargs: Any) -> None:
    """An ephemeral answer, whether or not the interaction was answered already."""
    if interaction.response.is_done():
        await interaction.followup.send(
            text, ephemeral=True, allowed_mentions=NO_MENTIONS, **kwargs
        )
    else:
        await interaction.response.send_message(
            text, ephemeral=True, allowed_mentions=NO_MENTIONS, **kwargs
        )


def open_stream(
    bot: MuseBot, request: GenerationRequest
) -> tuple[AsyncIterator[GenerationChunk] | None, str | None]:
    """Queue the request; (stream, None) or (None, the refusal to show)."""
    if getattr(bot, "stopping", False):
        return None, RESTARTING
    try:
        return bot.engine.stream(request), None
    except EngineBusy as exc:
        return None, busy_message(exc.retry_after_s)
    except EngineDead as exc:
        return None, report(exc, "engine.stream")


async def record(
    bot: MuseBot, interaction: discord.Interaction, plan: Plan, message_id: int | None = None
) -> int:
    """The generation's row (status running), written before streaming."""
    return await record_as(
        bot, plan, interaction.user.id, interaction.guild_id, interaction.channel_id, message_id
    )


async def record_or_unsaved(
    bot: MuseBot, interaction: discord.Interaction, plan: Plan, message_id: int | None
) -> tuple[int | None, str | None]:
    """(generation id, None), or (None, what is wrong) when the database cannot be written:
    the text is then generated and shown anyway, with a footer saying it was not saved."""
    try:
        return await record(bot, interaction, plan, message_id), None
    except Exception as exc:
        problem = storage_problem(exc)
        if problem is None:
            raise
        log.error("could not record a generation (%s): %s; answering unsaved", problem, exc)
        return None, problem


async def record_as(
    bot: MuseBot,
    plan: Plan,
    user_id: int,
    guild_id: int | None,
    channel_id: int | None,
    message_id: int | None = None,
) -> int:
    """`record` for a generation that is not an interaction's reply (a thread message)."""
    request = plan.request
    params = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "repetition_penalty": request.repetition_penalty,
        "max_new_tokens": request.max_new_tokens,
        "seed": request.seed,
        "response_prefix": request.response_prefix,
    }
    return await bot.store.record_generation(
        user_id=user_id,
        task=plan.task,
        messages=[m.as_dict() for m in request.messages],
        params=params,
        model_id=bot.engine.model_id or bot.settings.model or "default",
        fields=plan.fields,
        guild_id=guild_id,
        channel_id=channel_id,
        message_id=message_id,
        parent_id=plan.parent_id,
        conversation_id=plan.conversation_id,
    )


async def run_generation(interaction: discord.Interaction[MuseBot], plan: Plan) -> int | None:
    """Generate `plan` into a new reply to `interaction`; returns the generation id."""
    bot = interaction.client
    stream, refusal = open_stream(bot, plan.request)
    if stream is None:
        await answer_ephemeral(interaction, refusal or "")
        return None
    generation_id: int | None = None
    try:
        deferred = await interaction.response.defer(thinking=True)  # before any write
        message_id = getattr(deferred, "message_id", None)  # lets a restart edit the reply
        generation_id, unsaved = await record_or_unsaved(bot, interaction, plan, message_id)
        if generation_id is not None:
            bot.active[generation_id] = ActiveRun(plan.request.request_id, interaction.user.id)
        edit = interaction.edit_original_response
        last = await stream_edits(edit, bot, stream, plan, generation_id)
    except Exception as exc:  # noqa: BLE001 - every failure ends with a visible answer
        await fail(interaction, bot, generation_id, exc)
    else:
        try:
            await finish(interaction, bot, plan, generation_id, last, unsaved)
        except Exception as exc:  # noqa: BLE001 - the row is settled: only show the failure
            await fail(interaction, bot, None, exc)
    finally:
        bot.engine.abort(plan.request.request_id)
        if generation_id is not None:
            bot.active.pop(generation_id, None)
    await maybe_notice(interaction, bot)
    return generation_id


async def stream_edits(
    edit: Callable[..., Awaitable[Any]],
    bot: MuseBot,
    stream: AsyncIterator[GenerationChunk],
    plan: Plan,
    generation_id: int | None,
) -> GenerationChunk:
    """Edit the reply with the text so far, at most once per `EDIT_INTERVAL_S`. A progress
    edit that fails is skipped (the final edit is what matters); once the interaction token
    has expired, progress edits stop."""
    from bot.views import streaming_view

    latest: list[GenerationChunk] = []

    async def consume() -> GenerationChunk:
        async for chunk in stream:
            latest.append(chunk)
            if chunk.finished or blocked_by(plan.blocklist, chunk.text):
                return chunk  # a blocked text is never shown, even in part
        raise RuntimeError("the stream ended without a final chunk")

    pump = asyncio.create_task(consume())
    view = streaming_view(generation_id) if generation_id is not None else None
    shown, last_edit = "", 0.0
    interval = bot.edit_interval_s
    try:
        while not pump.done():
            await asyncio.wait({pump}, timeout=POLL_S)
            if pump.done() or time.monotonic() - last_edit < interval:
                continue
            content = progress_text(bot, plan, latest)
            if content == shown:
                continue
            kwargs = {"view": view} if view is not None else {}
            last_edit = time.monotonic()
            try:
                await edit(content=content, allowed_mentions=NO_MENTIONS, **kwargs)
            except discord.HTTPException as exc:
                log.warning("generation %s: a progress edit failed: %s", generation_id, exc)
                if token_gone(exc):
                    interval = float("inf")
                continue
            shown, view = content, None
        return pump.result()
    finally:
        pump.cancel()


def progress_text(bot: MuseBot, plan: Plan, latest: list[GenerationChunk]) -> str:
    """ "Queued — position N" while waiting, else the partial text with a marker."""
    if not latest:
        position = bot.engine.queue_position(plan.request.request_id)
        if position:
            return rendering.queued(position)
        return rendering.in_progress("")
    text = latest[-1].text
    if plan.task == "dialogue":
        text = rendering.render_dialogue(text)
    return rendering.in_progress(text)


def final_pieces(
    plan: Plan,
    bot: MuseBot,
    last: GenerationChunk,
    *,
    ending: str | None = None,
    unsaved: str | None = None,
) -> tuple[str, list[str]]:
    """(the stored output, the messages to show) for a finished chunk. `ending` overrides the
    finish reason's note (`interrupted`); `unsaved` adds a footer line saying why it was not
    saved."""
    preset = bot.presets[plan.task]
    output = finish_text(preset, plan.shown_fields, last.text)
    body = rendering.render_output(plan.task, output) or "*(no text)*"
    note = rendering.finish_note(ending or last.finish_reason)
    if note:
        body = f"{body}\n\n{note}"
    tail = rendering.footer(last.model_id, last.tokens_out, last.total_ms)
    if unsaved:
        tail = f"{tail}\n{rendering.unsaved_note(unsaved)}"
    pieces = split_message(body, limit=2000 - len(tail) - 2)
    pieces[-1] = f"{pieces[-1]}\n{tail}"
    return output, pieces


async def finish(
    interaction: discord.Interaction[MuseBot],
    bot: MuseBot,
    plan: Plan,
    generation_id: int | None,
    last: GenerationChunk,
    unsaved: str | None = None,
) -> None:
    """The finished row, then the final edit (text, footer, buttons) and follow-ups; a text
    that could not be saved is shown without buttons."""
    from bot.views import finished_view

    pieces = await settle(bot, plan, generation_id, last, unsaved)
    view = finished_view(generation_id, plan.task) if generation_id is not None else None
    await deliver(interaction, bot, pieces, view, generation_id)


async def settle(
    bot: MuseBot,
    plan: Plan,
    generation_id: int | None,
    last: GenerationChunk,
    unsaved: str | None = None,
) -> list[str]:
    """Store the finished row; the messages to show. An output that hits the guild's
    blocklist is withheld: not stored, not shown, the row `failed` with the rule. A text cut
    off by a shutdown is `interrupted`. When the database cannot be written the text is still
    shown, its footer saying so."""
    active = getattr(bot, "active", {})  # the console has no ⏹, so no `active`
    run = active.get(generation_id) if generation_id is not None else None
    cut = run is not None and run.interrupted and last.finish_reason == "cancelled"
    ending = "interrupted" if cut else None
    output, pieces = final_pieces(plan, bot, last, ending=ending, unsaved=unsaved)
    status = "interrupted" if cut else STATUS_BY_REASON.get(last.finish_reason or "", "failed")
    error = last.error
    rule = blocked_by(plan.blocklist, output) or blocked_by(plan.blocklist, last.text)
    if rule is not None:
        output, status, error = "", "failed", f"withheld: the output matched the blocklist {rule!r}"
        pieces = [withheld_text(rule)]
    if generation_id is None:
        return pieces
    try:
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
    except Exception as exc:
        problem = storage_problem(exc)
        if problem is None:
            raise
        log.error("could not store generation %s (%s): %s", generation_id, problem, exc)
        if rule is None:
            pieces = final_pieces(plan, bot, last, ending=ending, unsaved=problem)[1]
    return pieces


async def record_failure(bot: MuseBot, generation_id: int | None, exc: BaseException) -> None:
    """Mark a generation `failed` with its error; a store that fails too is only logged."""
    if generation_id is None:
        return
    try:
        await bot.store.finish_generation(
            generation_id, "", "error", 0, 0, None, 0.0, status="failed", error=repr(exc)
        )
    except Exception:  # noqa: BLE001 - the store may be the thing that failed
        log.exception("could not record the failure of generation %s", generation_id)


async def fail(
    interaction: discord.Interaction[MuseBot],
    bot: MuseBot,
    generation_id: int | None,
    exc: BaseException,
) -> None:
    """Record the failure, and replace "thinking…" with what happened."""
    message = report(exc, f"generation {generation_id}")
    await record_failure(bot, generation_id, exc)
    try:
        if interaction.response.is_done():
            await interaction.edit_original_response(
                content=message, view=None, allowed_mentions=NO_MENTIONS
            )
        else:
            await answer_ephemeral(interaction, message)
    except discord.HTTPException:
        log.warning("could not show the failure of generation %s", generation_id)


async def maybe_notice(interaction: discord.Interaction[MuseBot], bot: MuseBot) -> None:
    """The first-use notice, once per user, ephemeral."""
    try:
        if await bot.store.mark_notice_shown(interaction.user.id):
            await interaction.followup.send(NOTICE, ephemeral=True, allowed_mentions=NO_MENTIONS)
    except Exception as exc:  # noqa: BLE001 - a missing notice must not break a reply
        report(exc, "first-use notice")


NOTICE = (
    "👋 First time with Muse? Your prompts, the generated texts and your ratings are stored "
    "by this server's Muse and may be used to train models. See `/privacy` for what is kept "
    "(and to opt out of training), and `/forget` to delete all your data."
)
