"""/loop: this server's learning loop — `status` (anyone), `set`, `tune` and `rollback`
(Manage Server) — and the loop itself, run in the background while the bot is up (in the
process that serves shard 0, so that several shard processes never run it twice)."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.loop.runner import LoopRunner
from bot.core.loop.status import loop_status
from bot.discord.cogs.admin import MANAGERS_ONLY, is_manager
from bot.discord.context import NO_MENTIONS, answer_ephemeral, app_of

log = logging.getLogger("muse.bot.discord.cogs.loop")


class LoopCog(commands.Cog):
    """The learning loop's commands, and its runner."""

    group = app_commands.Group(
        name="loop", description="This server's learning loop", guild_only=True
    )

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.app = app_of(bot)
        self.runner: LoopRunner | None = None

    async def cog_load(self) -> None:
        command = getattr(self.bot, "loop_command", None)
        shards = getattr(self.bot, "shard_ids", None)
        if command is None or (shards is not None and 0 not in shards):
            return
        self.runner = LoopRunner(self.app, tune_command=command, announce=self.announce)
        self.app.loop = self.runner
        self.runner.start()

    async def cog_unload(self) -> None:
        if self.runner is not None:
            self.app.loop = None
            await self.runner.close()

    async def announce(self, guild_id: int, channel_id: int, text: str) -> None:
        """A loop message in the server's loop channel; it pings no one."""
        channel = self.bot.get_partial_messageable(channel_id, guild_id=guild_id)
        await channel.send(text, allowed_mentions=NO_MENTIONS)

    @group.command(name="status")
    async def status(self, interaction: discord.Interaction) -> None:
        """State, rows since the last tune, the challenger, its votes and the history."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        shown = await loop_status(self.app.store, self.app.settings, interaction.guild_id or 0)
        await interaction.edit_original_response(content=shown.render()[:2000])

    @group.command(name="set")
    @app_commands.describe(
        enabled="Turn the loop on or off",
        channel="Where the loop announces tunes and decisions",
        min_examples="New training rows before a tune (8–100000)",
        min_votes="Final arena votes before a decision (6–100000)",
        confidence="The probability that promotes or retires (0.80–0.999)",
    )
    async def set_(
        self,
        interaction: discord.Interaction,
        enabled: bool | None = None,
        channel: discord.TextChannel | None = None,
        min_examples: app_commands.Range[int, 8, 100000] | None = None,
        min_votes: app_commands.Range[int, 6, 100000] | None = None,
        confidence: app_commands.Range[float, 0.80, 0.999] | None = None,
    ) -> None:
        """Turn the loop on or off and tune its thresholds (Manage Server)."""
        if not is_manager(interaction):
            await answer_ephemeral(interaction, MANAGERS_ONLY.format(command="loop set"))
            return
        changes = {
            name: value
            for name, value in (
                ("enabled", enabled),
                ("channel_id", channel.id if channel else None),
                ("min_examples", min_examples),
                ("min_votes", min_votes),
                ("confidence", confidence),
            )
            if value is not None
        }
        guild_id = interaction.guild_id or 0
        if changes:
            await self.app.store.update_loop(guild_id, **changes)
        shown = await loop_status(self.app.store, self.app.settings, guild_id)
        said = "✅ Saved.\n" if changes else ""
        await answer_ephemeral(interaction, (said + shown.render())[:2000])

    @group.command(name="tune")
    async def tune(self, interaction: discord.Interaction) -> None:
        """Start a tune now if the data allows (Manage Server)."""
        if not is_manager(interaction):
            await answer_ephemeral(interaction, MANAGERS_ONLY.format(command="loop tune"))
            return
        if self.runner is None:
            await answer_ephemeral(interaction, "The loop does not run in this Muse process.")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        said = await self.runner.tune_now(interaction.guild_id or 0)
        await interaction.edit_original_response(content=said)

    @group.command(name="rollback")
    async def rollback(self, interaction: discord.Interaction) -> None:
        """Put the previous default back and retire the current one (Manage Server)."""
        if not is_manager(interaction):
            await answer_ephemeral(interaction, MANAGERS_ONLY.format(command="loop rollback"))
            return
        if self.runner is None:
            await answer_ephemeral(interaction, "The loop does not run in this Muse process.")
            return
        await answer_ephemeral(interaction, await self.runner.rollback(interaction.guild_id or 0))


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(LoopCog(bot))
