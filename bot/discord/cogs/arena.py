"""/arena (blind A/B between the guild's default model and a challenger) and /leaderboard
(the models ranked by those votes, with 95 % intervals and a chart)."""

from __future__ import annotations

import asyncio
import io
import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.core import arena
from bot.core.compare import run_compare
from bot.core.plans import admitted_plan
from bot.discord.admission import admitted
from bot.discord.buttons import VIEWS
from bot.discord.cogs.generation import task_option, two_take_task
from bot.discord.compare_reply import CompareReply
from bot.discord.context import NO_MENTIONS, answer_ephemeral, app_of, where_of
from generation.errors import OptionError
from storage.leaderboard import Leaderboard, leaderboard_chart_png

log = logging.getLogger("muse.bot.discord.cogs.arena")

NO_VOTES = "No arena votes yet: `/arena` shows two models' takes of one prompt, blind; vote there."


def leaderboard_embed(board: Leaderboard, title: str) -> discord.Embed:
    """The table: rank, model, score with its 95 % interval, votes, win rate."""
    embed = discord.Embed(title=title)
    if not board.rows:
        embed.description = NO_VOTES
        return embed
    lines = []
    for rank, row in enumerate(board.rows, 1):
        lines.append(
            f"**{rank}. {discord.utils.escape_markdown(row.model)}** — {row.score:.0f} "
            f"({row.lower:.0f}–{row.upper:.0f}) · {row.votes} votes · {row.win_rate:.0%} won"
        )
    embed.description = "\n".join(lines)
    embed.set_footer(text="Bradley–Terry fit of the votes; 95 % bootstrap intervals; ties = ½ win")
    return embed


class ArenaCog(commands.Cog):
    """Blind battles between models, and their leaderboard."""

    def __init__(self, bot: commands.Bot) -> None:
        self.app = app_of(bot)

    @app_commands.command(name="arena")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="What to write about", task="Which kind of text (default generate)"
    )
    async def arena_(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 1000],
        task: str | None = None,
    ) -> None:
        """Two models write the same prompt, blind: vote for the better take."""
        task = await two_take_task(interaction, task)
        if task is None:
            return
        async with admitted(interaction, task, [prompt]) as admission:
            if admission is None:
                return
            sides = await arena.contenders(self.app, admission.settings, interaction.guild_id)
            if isinstance(sides, str):
                await answer_ephemeral(interaction, sides)
                return
            fields = {self.app.presets[task].main_field: prompt}
            try:
                first = admitted_plan(self.app, admission, interaction.user.id, task, fields)
            except OptionError as exc:
                await answer_ephemeral(interaction, f"⚠️ {exc}")
                return
            plan_a, plan_b = arena.bout_plans(first, arena.draw_sides(*sides))
            reply = CompareReply(interaction, self.app, VIEWS, blind=True)
            where = where_of(interaction)
            await run_compare(self.app, plan_a, where, reply, plan_b, admission.slot)

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.describe(task="Only the arena votes of this kind of text")
    async def leaderboard(self, interaction: discord.Interaction, task: str | None = None) -> None:
        """The models ranked by this server's arena votes, with 95 % intervals."""
        if task is not None and await task_option(interaction, "leaderboard", task, task) is None:
            return
        await interaction.response.defer(thinking=True)
        board = await arena.leaderboard(self.app, interaction.guild_id, task)
        title = "Arena leaderboard" + (f" · /{task}" if task else "")
        embed = leaderboard_embed(board, title)
        if not board.rows:
            await interaction.followup.send(embed=embed, allowed_mentions=NO_MENTIONS)
            return
        png = await asyncio.to_thread(leaderboard_chart_png, board, title)
        embed.set_image(url="attachment://muse-leaderboard.png")
        await interaction.followup.send(
            embed=embed,
            file=discord.File(io.BytesIO(png), "muse-leaderboard.png"),
            allowed_mentions=NO_MENTIONS,
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(ArenaCog(bot))
