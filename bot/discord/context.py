"""What every Discord handler needs from an interaction: the application behind the client,
who pressed (and may they moderate), where, and an ephemeral answer that pings no one."""

from __future__ import annotations

from typing import Any, Protocol, cast

import discord

from bot.core.actions import Actor
from bot.core.app import Muse
from bot.core.policy import Where

NO_MENTIONS = discord.AllowedMentions.none()


class HasApp(Protocol):
    """The client Muse runs in (`MuseBot`), seen structurally: it carries the application."""

    app: Muse


def app_of(client: object) -> Muse:
    """The application of `interaction.client` (a `MuseBot`)."""
    return cast(HasApp, client).app


def actor_of(interaction: discord.Interaction) -> Actor:
    """The presser, a moderator when they have Manage Messages here."""
    perms = interaction.permissions
    return Actor(interaction.user.id, bool(perms.manage_messages or perms.administrator))


def where_of(interaction: discord.Interaction) -> Where:
    """Who starts what, where (a thread's parent channel counts as its channel)."""
    channel = interaction.channel
    parent = getattr(channel, "parent_id", None) if isinstance(channel, discord.Thread) else None
    return Where(interaction.user.id, interaction.guild_id, interaction.channel_id, parent)


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
