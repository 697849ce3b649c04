"""The final text of a generation: the interaction's reply is edited; once its token has
expired (Discord's 15 minutes) the text is posted in the channel instead, and the store's
message id follows it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord

from bot.errors import storage_problem

if TYPE_CHECKING:
    from bot.client import MuseBot

log = logging.getLogger("muse.bot.delivery")

NO_MENTIONS = discord.AllowedMentions.none()
#: Invalid Webhook Token, Unknown Webhook: the interaction token can no longer be used.
TOKEN_GONE_CODES = frozenset({50027, 10015})


def token_gone(exc: discord.HTTPException) -> bool:
    """Whether `exc` says the interaction token expired (or was never valid)."""
    return exc.status == 401 or exc.code in TOKEN_GONE_CODES


async def deliver(
    interaction: discord.Interaction[MuseBot],
    bot: MuseBot,
    pieces: list[str],
    view: discord.ui.View | None,
    generation_id: int | None,
) -> discord.Message:
    """Show `pieces` (the reply, then follow-ups) with `view` on the first; returns the
    message that holds the first piece."""
    try:
        message: discord.Message = await interaction.edit_original_response(
            content=pieces[0], view=view, allowed_mentions=NO_MENTIONS
        )
        followups: discord.abc.Messageable | discord.Webhook = interaction.followup
    except discord.HTTPException as exc:
        if not token_gone(exc):
            raise
        log.warning(
            "generation %s: the interaction token expired; posting the text in the channel",
            generation_id,
        )
        channel = bot.get_partial_messageable(interaction.channel_id or 0)
        message = await channel.send(pieces[0], view=view, allowed_mentions=NO_MENTIONS)
        followups = channel
    if generation_id is not None:
        await remember_message(bot, generation_id, message.id)
    sent = [await followups.send(piece, allowed_mentions=NO_MENTIONS) for piece in pieces[1:]]
    if generation_id is not None and sent:
        await remember_followups(bot, generation_id, [m.id for m in sent if m is not None])
    return message


async def remember_message(bot: MuseBot, generation_id: int, message_id: int) -> None:
    """`store.set_message_id`, tolerating a database that cannot be written (logged)."""
    try:
        await bot.store.set_message_id(generation_id, message_id)
    except Exception as exc:
        _log_storage_problem(exc, "message", generation_id)


async def remember_followups(bot: MuseBot, generation_id: int, message_ids: list[int]) -> None:
    """`store.set_followup_message_ids` (so 🗑 can delete them), tolerating the same."""
    try:
        await bot.store.set_followup_message_ids(generation_id, message_ids)
    except Exception as exc:
        _log_storage_problem(exc, "follow-up messages", generation_id)


def _log_storage_problem(exc: Exception, what: str, generation_id: int) -> None:
    problem = storage_problem(exc)
    if problem is None:
        raise exc
    log.error("could not store the %s of generation %s (%s)", what, generation_id, problem)
