"""The ⭐ modal: stars 1–5 and an optional comment."""

from __future__ import annotations

import logging

import discord

from bot.core import actions
from bot.core.actions import parse_stars
from bot.core.errors import report
from bot.discord.context import answer_ephemeral, app_of

log = logging.getLogger("muse.bot.discord.modals")

COMMENT_LIMIT = 1000


class StarsModal(discord.ui.Modal, title="Rate this text"):
    """Stars and a comment for one generation."""

    stars: discord.ui.TextInput = discord.ui.TextInput(
        label="Stars (1–5)", custom_id="stars", placeholder="4", min_length=1, max_length=2
    )
    comment: discord.ui.TextInput = discord.ui.TextInput(
        label="Comment (optional)",
        custom_id="comment",
        style=discord.TextStyle.long,
        required=False,
        max_length=COMMENT_LIMIT,
    )

    def __init__(self, generation_id: int) -> None:
        super().__init__(custom_id=f"muse:starsmodal:{generation_id}")
        self.generation_id = generation_id

    async def on_submit(self, interaction: discord.Interaction) -> None:
        stars = parse_stars(self.stars.value)
        if stars is None:
            await answer_ephemeral(interaction, "Stars must be a whole number from 1 to 5.")
            return
        comment = self.comment.value.strip() or None
        if comment is not None and len(comment) > COMMENT_LIMIT:  # clients check; the API not
            await answer_ephemeral(
                interaction, f"A comment can be at most {COMMENT_LIMIT:,} characters."
            )
            return
        app = app_of(interaction.client)
        said = await actions.rate(
            app, self.generation_id, interaction.user.id, stars=stars, comment=comment
        )
        await answer_ephemeral(interaction, said)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await answer_ephemeral(interaction, report(error, "stars modal"))
