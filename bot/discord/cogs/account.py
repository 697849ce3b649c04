"""What Muse keeps about you: /history, /privacy, /forget (with a confirm button), /help."""

from __future__ import annotations

import logging
import re
from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.forgetting import forget
from bot.core.policy import out_of_range
from bot.discord.context import NO_MENTIONS, answer_ephemeral, app_of
from bot.discord.rendering import jump_link
from bot.discord.splitting import split_message
from storage.rows import Generation

log = logging.getLogger("muse.bot.discord.cogs.account")

PREVIEW_CHARS = 60
TABLE_NAMES = {
    "generations": "generations",
    "feedback": "ratings",
    "feedback_events": "rating changes",
    "comparisons": "comparison votes",
    "conversations": "conversations",
    "users": "user records",
    "models": "tuned models retired (they had learnt from your texts)",
}


def preview(generation: Generation) -> str:
    """A one-line preview: the output, else the prompt."""
    text = generation.output or " ".join(str(v) for v in generation.fields.values())
    text = discord.utils.escape_markdown(" ".join(text.split()))
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def history_lines(generations: list[Generation]) -> str:
    """One line per generation: id, task, status, link and preview."""
    if not generations:
        return "You have no generations on this server yet."
    lines = ["**Your recent generations**"]
    for g in generations:
        link = jump_link(g)
        where = f"[jump]({link})" if link else "no message"
        lines.append(f"`#{g.id}` /{g.task} · {g.status} · {where} — {preview(g)}")
    return "\n".join(lines)


def removed_summary(counts: dict[str, int]) -> str:
    """'3 generations, 2 ratings' from the store's counts."""
    parts = [f"{n} {TABLE_NAMES.get(table, table)}" for table, n in counts.items() if n]
    return ", ".join(parts) or "nothing (Muse had no data about you)"


PRIVACY = """\
**What Muse keeps about you**
• Your prompts and the texts Muse wrote for you, with the settings used (model, seed, timing).
• Your ratings (👍 👎 ⭐, comments) and /compare votes, and your /chat conversations.
• Which messages show your texts, so `/history` can link them.
Server managers can export rated texts as training data (`/export`). Exports replace user ids \
with pseudonyms (a salted hash), and never include deleted texts, forgotten users, or people \
who opted out.
• `/privacy training:deny` keeps your data out of training exports (still used for /history).
• Models tuned on a server's ratings and edits (the learning loop, `muse tune`) learn from \
the texts of the members whose rows trained them, and Muse records who they were.
• `/forget` deletes everything Muse stores about you, on every server, and retires every \
tuned model your texts trained: it stops writing at once, and the loop retrains without you.
**Your training status:** {status}"""

HELP = """\
**Muse** writes with a small AI model that runs on this server's machine, and learns what \
this community likes from your ratings.
`/story` a short story · `/poem` a poem · `/dialogue` NPC dialogue for a scene
`/describe` product copy, an ad, a post or a news blurb · `/generate` anything, from a free prompt
`/character` a game character · `/quest` a quest hook
`/chat` a conversation in a thread (it remembers what was said)
`/compare` two takes side by side: vote for the better one
`/history` your recent texts · `/stats` this server's ratings
`/privacy` what Muse keeps, and opting out of training · `/forget` delete all your data
`/export` training data (Manage Server) · `/settings` this server's rules (Manage Server)
**Ratings:** 👍 👎 and ⭐ (1–5, with a comment) on each text, 🔁 for another take. Ratings \
decide which texts become training examples (liked texts, and pairs where one take beat the \
other), so the model can be tuned to this community.
Every text is AI-generated and marked as such."""


class ForgetButton(
    discord.ui.DynamicItem[discord.ui.Button], template=r"muse:forget:(?P<user>\d+)"
):
    """Confirms /forget; only the user it was made for can press it."""

    def __init__(self, user_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Yes, delete all my data",
                style=discord.ButtonStyle.danger,
                custom_id=f"muse:forget:{user_id}",
            )
        )
        self.user_id = user_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> ForgetButton:
        return cls(int(match["user"]))

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id == self.user_id:
            return True
        await answer_ephemeral(interaction, "🚫 Only the person who asked can confirm this.")
        return False

    async def callback(self, interaction: discord.Interaction) -> None:
        counts = await forget(app_of(interaction.client), self.user_id)
        text = f"🗑️ Done. Muse deleted everything it kept about you: {removed_summary(counts)}."
        await interaction.response.edit_message(content=text, view=None)


class AccountCog(commands.Cog):
    """Your data: history, privacy, forgetting; and help."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.app = app_of(bot)

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ForgetButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ForgetButton)

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.describe(count="How many (1–25, default 10)")
    async def history(
        self,
        interaction: discord.Interaction,
        count: app_commands.Range[int, 1, 25] | None = None,
    ) -> None:
        """Your recent generations on this server (only you see them)."""
        count = 10 if count is None else count
        if problem := out_of_range("count", count, 1, 25):
            await answer_ephemeral(interaction, f"⚠️ {problem}")
            return
        rows = await self.app.store.recent_generations(
            interaction.user.id, interaction.guild_id, limit=count
        )
        pieces = split_message(history_lines(rows))
        await answer_ephemeral(interaction, pieces[0], suppress_embeds=True)
        for piece in pieces[1:]:
            await answer_ephemeral(interaction, piece, suppress_embeds=True)

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.describe(training="allow or deny the use of your data in training exports")
    async def privacy(
        self,
        interaction: discord.Interaction,
        training: Literal["allow", "deny"] | None = None,
    ) -> None:
        """What Muse keeps about you; opt out of (or back into) training exports."""
        if training not in (None, "allow", "deny"):
            await answer_ephemeral(interaction, "⚠️ training must be allow or deny.")
            return
        store, user_id = self.app.store, interaction.user.id
        if training is not None:
            await store.set_opted_out(user_id, training == "deny")
        opted_out = await store.is_opted_out(user_id)
        status = (
            "opted out — your data never appears in training exports."
            if opted_out
            else "allowed — your rated texts may appear (pseudonymised) in training exports."
        )
        saved = "✅ Saved.\n" if training is not None else ""
        await answer_ephemeral(interaction, saved + PRIVACY.format(status=status))

    @app_commands.command()
    @app_commands.guild_only()
    async def forget(self, interaction: discord.Interaction) -> None:
        """Delete all your data (after you confirm)."""
        view = discord.ui.View(timeout=None)
        view.add_item(ForgetButton(interaction.user.id))
        await answer_ephemeral(
            interaction,
            "⚠️ This deletes **everything** Muse keeps about you, on every server: your "
            "prompts, texts, ratings, votes and conversations. It cannot be undone.",
            view=view,
        )

    @app_commands.command(name="help")
    @app_commands.guild_only()
    async def help_(self, interaction: discord.Interaction) -> None:
        """What Muse does and how ratings are used."""
        await interaction.response.send_message(HELP, ephemeral=True, allowed_mentions=NO_MENTIONS)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(AccountCog(bot))
