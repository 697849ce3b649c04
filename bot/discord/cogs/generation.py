"""The generation commands: /story, /poem, /dialogue, /describe, /generate, /compare.

Options that offer choices (/poem's form, /compare's task, …) are plain text here: their
choices come from the loaded presets (`bot.discord.choices`), and `Preset.resolve` or the
command re-validates what arrives."""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.choices import one_of, option_choices
from bot.core.compare import run_compare
from bot.core.plans import admitted_plan
from bot.core.policy import check_range, texts_of
from bot.discord.admission import admitted
from bot.discord.buttons import VIEWS
from bot.discord.compare_reply import CompareReply
from bot.discord.context import answer_ephemeral, app_of, where_of
from bot.discord.replies import run_in_reply
from generation.errors import OptionError

log = logging.getLogger("muse.bot.discord.cogs.generation")

Text = app_commands.Range[str, 1, 1000]


async def task_option(
    interaction: discord.Interaction, command: str, task: str | None, default: str
) -> str | None:
    """`command`'s task option (`default` when not given), re-validated against the presets'
    choices (Discord clients validate; the API does not promise to); None after refusing."""
    task = task or default
    offered = option_choices(app_of(interaction.client).presets).get((command, "task"), (default,))
    if task not in offered:
        await answer_ephemeral(interaction, f"⚠️ task must be {one_of(offered)}.")
        return None
    return task


async def two_take_task(interaction: discord.Interaction, task: str | None) -> str | None:
    """/compare's or /arena's task (default generate); None after refusing."""
    return await task_option(interaction, "compare", task, "generate")


class GenerationCog(commands.Cog):
    """Single-shot generation commands."""

    def __init__(self, bot: commands.Bot) -> None:
        self.app = app_of(bot)

    async def start(
        self,
        interaction: discord.Interaction,
        task: str,
        fields: dict[str, Any],
        **kw: Any,
    ) -> None:
        """Check the guild's rules and limits, validate, then generate into the reply."""
        fields = {k: v for k, v in fields.items() if v is not None}
        async with admitted(interaction, task, texts_of(fields)) as admission:
            if admission is None:
                return
            try:
                plan = admitted_plan(self.app, admission, interaction.user.id, task, fields, **kw)
            except OptionError as exc:
                await answer_ephemeral(interaction, f"⚠️ {exc}")
                return
            await run_in_reply(interaction, plan, VIEWS, admission.slot)

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.describe(prompt="What the story is about", length="How long the story is")
    async def story(
        self,
        interaction: discord.Interaction,
        prompt: Text,
        length: str | None = None,
    ) -> None:
        """Write a short story."""
        await self.start(interaction, "story", {"prompt": prompt, "length": length})

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.describe(topic="What the poem is about", form="The poem's form")
    async def poem(
        self,
        interaction: discord.Interaction,
        topic: Text,
        form: str | None = None,
    ) -> None:
        """Write a poem."""
        await self.start(interaction, "poem", {"topic": topic, "form": form})

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.describe(
        scene="Where and what is happening",
        characters="Who speaks, comma-separated (e.g. Innkeeper, Stranger)",
        lines="How many lines (2–20)",
        tone="The mood, e.g. tense or funny",
        task="Which kind of dialogue (default dialogue)",
    )
    async def dialogue(
        self,
        interaction: discord.Interaction,
        scene: Text,
        characters: Text,
        lines: app_commands.Range[int, 2, 20] | None = None,
        tone: app_commands.Range[str, 1, 100] | None = None,
        task: str | None = None,
    ) -> None:
        """Write NPC dialogue for a scene."""
        chosen = await task_option(interaction, "dialogue", task, "dialogue")
        if chosen is None:
            return
        fields = {"scene": scene, "characters": characters, "lines": lines, "tone": tone}
        try:
            check_range("lines", lines, 2, 20)
            if len(characters.split(",")) < 1 or not characters.strip(" ,"):
                raise OptionError("characters needs at least one name.")
        except OptionError as exc:
            await answer_ephemeral(interaction, f"⚠️ {exc}")
            return
        await self.start(interaction, chosen, fields)

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.describe(
        product="The product to write about",
        audience="Who it is for",
        kind="product copy (default), an ad, a social-media post or a news blurb",
    )
    async def describe(
        self,
        interaction: discord.Interaction,
        product: Text,
        audience: app_commands.Range[str, 1, 200] | None = None,
        kind: str | None = None,
    ) -> None:
        """Write product / marketing copy, an ad, a social-media post or a news blurb."""
        fields = {"product": product, "audience": audience, "kind": kind}
        await self.start(interaction, "describe", fields)

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.describe(
        concept="Who the character is, e.g. a nervous goblin alchemist",
        setting="The game's world (default a fantasy world)",
    )
    async def character(
        self,
        interaction: discord.Interaction,
        concept: Text,
        setting: app_commands.Range[str, 1, 200] | None = None,
    ) -> None:
        """A game character: name, look, voice, motive and a secret."""
        await self.start(interaction, "character", {"concept": concept, "setting": setting})

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.describe(
        premise="What the quest is about, e.g. the king's crown was stolen",
        setting="The game's world (default a fantasy world)",
    )
    async def quest(
        self,
        interaction: discord.Interaction,
        premise: Text,
        setting: app_commands.Range[str, 1, 200] | None = None,
    ) -> None:
        """A quest hook: giver, goal, obstacle, twist and reward."""
        await self.start(interaction, "quest", {"premise": premise, "setting": setting})

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="Anything to write",
        temperature="Randomness, 0.0 (predictable) to 2.0 (wild)",
        max_tokens="The most tokens to write (16–1024)",
    )
    async def generate(
        self,
        interaction: discord.Interaction,
        prompt: Text,
        temperature: app_commands.Range[float, 0.0, 2.0] | None = None,
        max_tokens: app_commands.Range[int, 16, 1024] | None = None,
    ) -> None:
        """Write from a free prompt."""
        try:
            check_range("temperature", temperature, 0.0, 2.0)
            check_range("max_tokens", max_tokens, 16, 1024)
        except OptionError as exc:
            await answer_ephemeral(interaction, f"⚠️ {exc}")
            return
        await self.start(
            interaction,
            "generate",
            {"prompt": prompt},
            temperature=temperature,
            max_new_tokens=max_tokens,
        )

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="What to write about", task="Which kind of text (default generate)"
    )
    async def compare(
        self,
        interaction: discord.Interaction,
        prompt: Text,
        task: str | None = None,
    ) -> None:
        """Two takes side by side: vote for the better one."""
        task = await two_take_task(interaction, task)
        if task is None:
            return
        async with admitted(interaction, task, [prompt]) as admission:
            if admission is None:
                return
            fields = {self.app.presets[task].main_field: prompt}
            try:
                plan = admitted_plan(self.app, admission, interaction.user.id, task, fields)
            except OptionError as exc:
                await answer_ephemeral(interaction, f"⚠️ {exc}")
                return
            reply = CompareReply(interaction, self.app, VIEWS)
            await run_compare(self.app, plan, where_of(interaction), reply, slot=admission.slot)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(GenerationCog(bot))
