"""/compare's reply: both takes in the original response, as embeds A and B, edited while they
stream; then `A is better`, `B is better`, `Tie`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import discord

from bot.core.app import Muse
from bot.core.compare import NAMES, cut_off
from bot.core.policy import withheld_text
from bot.core.settle import Settled
from bot.core.surface import Shown
from bot.core.texts import finish_note
from bot.discord import rendering
from bot.discord.context import NO_MENTIONS, answer_ephemeral
from bot.discord.replies import Progress, show_failure
from generation.types import GenerationChunk

log = logging.getLogger("muse.bot.discord.compare_reply")

EMBED_LIMIT = 2900  # a take's description: both takes and footers within a message's 6,000


class VoteViews(Protocol):
    def compare(self, generation_a: int, generation_b: int) -> discord.ui.View: ...

    def arena(self, generation_a: int, generation_b: int) -> discord.ui.View: ...


def take_embed(name: str, text: str, footer: str | None = None) -> discord.Embed:
    """One take as an embed titled A or B (masked links shown with their URL)."""
    shown = rendering.show_links(text)
    if len(shown) > EMBED_LIMIT:  # cut: a code block may lose its closing fence
        shown = rendering.unmask_links(text)[: EMBED_LIMIT - 1] + "…"
    embed = discord.Embed(title=name, description=shown or "…")
    if footer:
        embed.set_footer(text=footer.removeprefix("-# "))
    return embed


def final_embed(name: str, take: Settled, blind: bool = False) -> discord.Embed:
    """A finished take; `blind` (the arena) leaves the model's name out of its footer."""
    last = take.last
    shown = withheld_text(take.withheld) if take.withheld else take.output or "*(no text)*"
    model = "a model" if blind else last.model_id
    tail = rendering.footer(model, last.tokens_out, last.total_ms, take.persona)
    return take_embed(name, shown, tail)


class CompareReply:
    """`CompareSurface` over an interaction's original response."""

    def __init__(
        self, interaction: discord.Interaction, app: Muse, views: VoteViews, blind: bool = False
    ) -> None:
        self.interaction = interaction
        self.views = views
        self.blind = blind  # the arena: no model is named until the voter has voted
        self._progress = Progress(app.edit_interval_s, "a comparison")

    async def refuse(self, text: str) -> None:
        await answer_ephemeral(self.interaction, text)

    async def begin(self) -> int | None:
        deferred = await self.interaction.response.defer(thinking=True)
        return getattr(deferred, "message_id", None)

    def started(self, generation_ids: Sequence[int]) -> None:
        return None

    def on_chunk(self, index: int, chunk: GenerationChunk) -> None:
        return None

    async def progress(self, latest: Sequence[GenerationChunk | None]) -> None:
        texts = [rendering.in_progress(c.text if c else "") for c in latest]
        embeds = [take_embed(n, t) for n, t in zip(NAMES, texts, strict=True)]
        edit = self.interaction.edit_original_response
        await self._progress.offer(
            "\n".join(texts), lambda: edit(embeds=embeds, allowed_mentions=NO_MENTIONS)
        )

    async def show(self, takes: Sequence[Settled]) -> Shown:
        interrupted = cut_off(list(takes))
        a, b = (take.generation_id for take in takes)
        votes = self.views.arena if self.blind else self.views.compare
        embeds = [final_embed(n, take, self.blind) for n, take in zip(NAMES, takes, strict=True)]
        message = await self.interaction.edit_original_response(
            content=finish_note("interrupted") if interrupted else "Which take is better?",
            embeds=embeds,
            view=None if interrupted or a is None or b is None else votes(a, b),
            allowed_mentions=NO_MENTIONS,
        )
        return Shown(message.id)

    async def fail(self, text: str) -> None:
        await show_failure(self.interaction, text)

    async def notify(self, text: str) -> None:
        await self.interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
