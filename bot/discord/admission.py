"""Every command or button that starts a generation goes through `admitted`:

async with admitted(interaction, "story", [prompt]) as guild:
    if guild is None:       # refused: the ephemeral answer was sent
        return
    ...                     # generate; the running slot is released on exit
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

import discord

from bot.core.limits import Limited
from bot.core.policy import Refused, admit
from bot.discord.context import answer_ephemeral, app_of, where_of
from storage.models import GuildSettings


@contextlib.asynccontextmanager
async def admitted(
    interaction: discord.Interaction, task: str, texts: Iterable[str]
) -> AsyncIterator[GuildSettings | None]:
    """Yield the guild's settings with a running slot held, or None after refusing."""
    try:
        settings, slot = await admit(app_of(interaction.client), task, where_of(interaction), texts)
    except (Refused, Limited) as exc:
        await answer_ephemeral(interaction, str(exc))
        yield None
        return
    try:
        yield settings
    finally:
        slot.release()
