"""/persona (Manage Server): the channel's persona, a name and instructions every generation
in the channel is written with."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.personas import NAME_LIMIT, PROMPT_LIMIT, describe_persona, problem_with
from bot.core.policy import blocked_by, guild_settings
from bot.discord.cogs.admin import MANAGERS_ONLY, is_manager
from bot.discord.context import answer_ephemeral, app_of

log = logging.getLogger("muse.bot.discord.cogs.persona")


def persona_channel(interaction: discord.Interaction) -> int:
    """The channel a persona belongs to: a thread's parent channel, else this channel."""
    channel = interaction.channel
    if isinstance(channel, discord.Thread) and channel.parent_id:
        return channel.parent_id
    return interaction.channel_id or 0


class PersonaCog(commands.Cog):
    """A persona per channel."""

    def __init__(self, bot: commands.Bot) -> None:
        self.app = app_of(bot)

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.describe(
        name=f"Who Muse speaks as here (at most {NAME_LIMIT} characters)",
        prompt=f"How the persona writes: its voice, manner, knowledge (at most {PROMPT_LIMIT:,})",
        clear="Remove this channel's persona",
    )
    async def persona(
        self,
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, NAME_LIMIT] | None = None,
        prompt: app_commands.Range[str, 1, PROMPT_LIMIT] | None = None,
        clear: bool | None = None,
    ) -> None:
        """Show or set this channel's persona (Manage Server)."""
        if not is_manager(interaction):
            await answer_ephemeral(interaction, MANAGERS_ONLY.format(command="persona"))
            return
        store, channel = self.app.store, persona_channel(interaction)
        current = await store.get_persona(channel)
        if clear:
            if name is not None or prompt is not None:
                await answer_ephemeral(interaction, "⚠️ Either clear the persona or set it.")
                return
            removed = await store.clear_persona(channel)
            said = "✅ This channel's persona was removed." if removed else "No persona to remove."
            await answer_ephemeral(interaction, said)
            return
        if name is None and prompt is None:
            await answer_ephemeral(interaction, describe_persona(current))
            return
        name = (name or (current.name if current else "")).strip()
        prompt = (prompt or (current.prompt if current else "")).strip()
        problem = problem_with(name, prompt)
        if problem is not None:
            await answer_ephemeral(interaction, f"⚠️ {problem}")
            return
        settings = await guild_settings(self.app, interaction.guild_id)
        rule = blocked_by(settings.blocklist, f"{name}\n{prompt}")
        if rule is not None:
            await answer_ephemeral(
                interaction,
                f"🚫 The persona contains `{rule}`, which this server's blocklist forbids.",
            )
            return
        saved = await store.set_persona(interaction.guild_id or 0, channel, name, prompt)
        await answer_ephemeral(interaction, "✅ Saved.\n" + describe_persona(saved))


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(PersonaCog(bot))
