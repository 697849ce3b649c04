"""/model (Manage Server): the guild's default model — the base, or an adapter `muse tune`
trained on this community's ratings and edits."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.model_choice import BASE, choices, default_model, served
from bot.core.policy import guild_settings
from bot.discord.cogs.admin import MANAGERS_ONLY, is_manager
from bot.discord.context import answer_ephemeral, app_of

log = logging.getLogger("muse.bot.discord.cogs.model")

NO_ADAPTERS = (
    "This server has only the base model. Train one on its ratings and edits: turn on the "
    "learning loop with `/loop set enabled:true`, or run `muse tune --name NAME --guild ID` on "
    "the host."
)


class ModelsCog(commands.Cog):
    """The guild's default model."""

    def __init__(self, bot: commands.Bot) -> None:
        self.app = app_of(bot)

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.describe(name="The model this server's texts come from (`base`: the base model)")
    async def model(self, interaction: discord.Interaction, name: str | None = None) -> None:
        """Show the models, or set this server's default (Manage Server)."""
        if not is_manager(interaction):
            await answer_ephemeral(interaction, MANAGERS_ONLY.format(command="model"))
            return
        store, guild_id = self.app.store, interaction.guild_id or 0
        if name is None:
            await answer_ephemeral(interaction, await self.listing(guild_id))
            return
        name = name.strip()
        if name != BASE and await served(self.app, name, guild_id) is None:
            known = ", ".join(f"`{n}`" for n in await choices(self.app, guild_id))
            await answer_ephemeral(
                interaction, f"⚠️ `{name[:80]}` is not a model Muse serves. Choose one of {known}."
            )
            return
        settings = await store.update_guild_settings(
            guild_id, default_model=None if name == BASE else name
        )
        now = await default_model(self.app, settings, guild_id) or BASE  # `base`: Muse's default
        await answer_ephemeral(interaction, f"✅ New texts on this server now come from **{now}**.")

    @model.autocomplete("name")
    async def model_names(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        names = await choices(self.app, interaction.guild_id)
        typed = current.casefold()
        return [app_commands.Choice(name=n, value=n) for n in names if typed in n.casefold()][:25]

    async def listing(self, guild_id: int) -> str:
        """The models, which one is this server's, and where the others come from."""
        settings = await guild_settings(self.app, guild_id)
        current = await default_model(self.app, settings, guild_id) or BASE
        names = await choices(self.app, guild_id)
        lines = ["**Models**"]
        for n in names:
            mark = " ← this server's default" if n == current else ""
            lines.append(f"• `{n}`{mark}")
        if len(names) == 1:
            lines.append(NO_ADAPTERS)
        return "\n".join(lines)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(ModelsCog(bot))
