"""Every command or button that starts a generation goes through `admitted`:

async with admitted(interaction, "story", [prompt]) as admission:
    if admission is None:   # refused: the ephemeral answer was sent
        return
    ...                     # generate; the running slot is released on exit
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

import discord

from bot.core.limits import Limited
from bot.core.policy import Admission, Refused, admit
from bot.discord.context import answer_ephemeral, app_of, where_of


@contextlib.asynccontextmanager
async def admitted(
    interaction: discord.Interaction, task: str, texts: Iterable[str]
) -> AsyncIterator[Admission | None]:
    """Yield the admission (settings, persona) with a running slot held, or None after
    refusing."""
    try:
        admission = await admit(app_of(interaction.client), task, where_of(interaction), texts)
    except (Refused, Limited) as exc:
        await answer_ephemeral(interaction, str(exc))
        yield None
        return
    try:
        yield admission
    finally:
        admission.slot.release()
