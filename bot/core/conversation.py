"""/chat conversations: the messages a turn sends to the model (history that fits the
context), thread names, and a turn streamed into a thread message (record → stream → finish)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import discord

from bot.errors import report
from bot.streaming import (
    NO_MENTIONS,
    ActiveRun,
    Plan,
    make_plan,
    open_stream,
    record_as,
    record_failure,
    settle,
    stream_edits,
)
from generation.types import Message
from storage.store import approximate_tokens

if TYPE_CHECKING:
    from bot.client import MuseBot
    from storage.models import GuildSettings

log = logging.getLogger("muse.bot.conversation")

THREAD_NAME_LIMIT = 100
CONTEXT_CAP = 2048  # tokens of context a turn may use, whatever the model allows
PLACEHOLDER = "⏳ writing… ▌"


def thread_name(message: str) -> str:
    """The thread's name: the message on one line, within Discord's 100 characters."""
    name = " ".join(message.split()) or "Chat with Muse"
    return name if len(name) <= THREAD_NAME_LIMIT else name[: THREAD_NAME_LIMIT - 1] + "…"


def context_tokens(bot: MuseBot) -> int:
    """The model's context length (capped), or the cap when the engine does not say."""
    loaded = getattr(bot.engine, "loaded", None)
    config = getattr(getattr(loaded, "model", None), "config", None)
    size = getattr(config, "max_position_embeddings", None)
    return min(int(size), CONTEXT_CAP) if isinstance(size, int) else CONTEXT_CAP


async def chat_plan(
    bot: MuseBot,
    user_id: int,
    message: str,
    conversation_id: int,
    guild: GuildSettings | None,
) -> Plan:
    """A /chat turn: the system prompt, the newest earlier turns that fit, then `message`."""
    plan = make_plan(bot, user_id, "chat", {"message": message}, guild=guild)
    head = plan.request.messages
    used = sum(approximate_tokens(m.content) for m in head)
    budget = context_tokens(bot) - plan.request.max_new_tokens - used
    history = await bot.store.conversation_history(conversation_id, budget) if budget > 0 else []
    turns = tuple(Message(m["role"], m["content"]) for m in history)  # type: ignore[arg-type]
    messages = (*head[:-1], *turns, head[-1])
    request = replace(plan.request, messages=messages)
    return replace(plan, request=request, conversation_id=conversation_id)


async def answer_in_thread(
    bot: MuseBot,
    thread: discord.Thread,
    plan: Plan,
    user_id: int,
    reply_to: discord.Message | None = None,
) -> int | None:
    """Stream one turn into a new message of `thread`; returns the generation id."""
    from bot.views import finished_view

    stream, refusal = open_stream(bot, plan.request)
    if stream is None:
        await thread.send(refusal or "", reference=reply_to, allowed_mentions=NO_MENTIONS)
        return None
    generation_id: int | None = None
    message: discord.Message | None = None
    try:
        generation_id = await record_as(bot, plan, user_id, thread.guild.id, thread.id)
        bot.active[generation_id] = ActiveRun(plan.request.request_id, user_id)
        message = await thread.send(PLACEHOLDER, reference=reply_to, allowed_mentions=NO_MENTIONS)
        last = await stream_edits(message.edit, bot, stream, plan, generation_id)
        pieces = await settle(bot, plan, generation_id, last)
        view = finished_view(generation_id, plan.task)
        await message.edit(content=pieces[0], view=view, allowed_mentions=NO_MENTIONS)
        await bot.store.set_message_id(generation_id, message.id)
        for piece in pieces[1:]:
            await thread.send(piece, allowed_mentions=NO_MENTIONS)
    except Exception as exc:  # noqa: BLE001 - every failure ends with a visible answer
        await _fail(bot, thread, message, generation_id, exc)
    finally:
        bot.engine.abort(plan.request.request_id)
        if generation_id is not None:
            bot.active.pop(generation_id, None)
    return generation_id


async def _fail(
    bot: MuseBot,
    thread: discord.Thread,
    message: discord.Message | None,
    generation_id: int | None,
    exc: BaseException,
) -> None:
    """Record the failure and say so in the thread."""
    text = report(exc, f"chat generation {generation_id}")
    await record_failure(bot, generation_id, exc)
    try:
        if message is not None:
            await message.edit(content=text, view=None, allowed_mentions=NO_MENTIONS)
        else:
            await thread.send(text, allowed_mentions=NO_MENTIONS)
    except discord.HTTPException:
        log.warning("could not show the failure of generation %s", generation_id)
