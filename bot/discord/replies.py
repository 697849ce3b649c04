"""A generation shown as an interaction's reply: "thinking…", then progress edits (at most one
per `edit_interval_s`), then the final text with its buttons, long texts continued in
follow-ups. Once the interaction token has expired (Discord's 15 minutes) the final text is
posted in the channel instead."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import discord

from bot.core.app import Muse
from bot.core.limits import Slot
from bot.core.plans import Plan
from bot.core.policy import withheld_text
from bot.core.run import run
from bot.core.settle import Settled
from bot.core.surface import Shown
from bot.core.texts import finish_note
from bot.discord import rendering
from bot.discord.context import NO_MENTIONS, answer_ephemeral, app_of, where_of
from bot.discord.splitting import split_message
from generation.tasks.presets import DIALOGUE
from generation.types import GenerationChunk

log = logging.getLogger("muse.bot.discord.replies")

#: Invalid Webhook Token, Unknown Webhook: the interaction token can no longer be used.
TOKEN_GONE_CODES = frozenset({50027, 10015})


class ViewSet(Protocol):
    """The buttons a reply carries (`bot.discord.buttons.VIEWS`); passed in, so that the
    buttons, which start replies of their own, and the replies need not import each other."""

    def streaming(self, generation_id: int) -> discord.ui.View: ...

    def finished(self, generation_id: int, kind: str, cut: bool = False) -> discord.ui.View: ...


def token_gone(exc: discord.HTTPException) -> bool:
    """Whether `exc` says the interaction token expired (or was never valid)."""
    return exc.status == 401 or exc.code in TOKEN_GONE_CODES


def compose(body: str, tail: str) -> list[str]:
    """`body` split to Discord's 2,000 characters, with `tail` (the footer) under the last."""
    pieces = split_message(body, limit=2000 - len(tail) - 2)
    pieces[-1] = f"{pieces[-1]}\n{tail}"
    return pieces


def final_pieces(settled: Settled) -> list[str]:
    """The messages that show a finished generation: the text, why it ended early, the
    footer (and a line when it could not be saved)."""
    last = settled.last
    if settled.withheld is not None:
        return [withheld_text(settled.withheld)]
    body = rendering.render_output(settled.kind, settled.output) or "*(no text)*"
    note = finish_note(settled.ending)
    if note:
        body = f"{body}\n\n{note}"
    tail = rendering.footer(last.model_id, last.tokens_out, last.total_ms, settled.persona)
    if settled.unsaved:
        tail = f"{tail}\n{rendering.unsaved_note(settled.unsaved)}"
    return compose(body, tail)


class Progress:
    """Throttled progress edits of one message: at most one per interval, none that would
    show the same text again, none after the token expired; a failed edit is skipped (the
    final edit is what matters)."""

    def __init__(self, interval_s: float, label: str) -> None:
        self.interval_s = interval_s
        self.label = label
        self.shown = ""
        self.last_edit = 0.0

    async def offer(self, content: str, edit: Callable[[], Awaitable[Any]]) -> bool:
        """Run `edit` (which shows `content`) if it is time; True when the edit was made."""
        if time.monotonic() - self.last_edit < self.interval_s or content == self.shown:
            return False
        self.last_edit = time.monotonic()
        try:
            await edit()
        except discord.HTTPException as exc:
            log.warning("%s: a progress edit failed: %s", self.label, exc)
            if token_gone(exc):
                self.interval_s = float("inf")
            return False
        self.shown = content
        return True


def progress_text(kind: str, latest: GenerationChunk | None, queued: int | None) -> str:
    """ "Queued — position N" while waiting, else the partial text (of a task of `kind`)
    with a marker."""
    if latest is None:
        return rendering.queued(queued) if queued else rendering.in_progress("")
    text = latest.text
    if kind == DIALOGUE:
        text = rendering.render_dialogue(text)
    return rendering.in_progress(text)


class InteractionReply:
    """`Surface` over an interaction's original response."""

    def __init__(self, interaction: discord.Interaction, app: Muse, views: ViewSet, task: str):
        self.interaction = interaction
        self.app = app
        self.views = views
        self.kind = app.kind_of(task)
        self.generation_id: int | None = None
        self._progress = Progress(app.edit_interval_s, "a reply")
        self._view: discord.ui.View | None = None  # ⏹, sent with the first progress edit

    async def refuse(self, text: str) -> None:
        await answer_ephemeral(self.interaction, text)

    async def begin(self) -> int | None:
        deferred = await self.interaction.response.defer(thinking=True)
        return getattr(deferred, "message_id", None)  # lets a restart edit the reply

    def started(self, generation_id: int | None) -> None:
        """The row exists: progress edits carry ⏹ for it."""
        self.generation_id = generation_id
        self._progress.label = f"generation {generation_id}"
        if generation_id is not None:
            self._view = self.views.streaming(generation_id)

    def on_chunk(self, chunk: GenerationChunk) -> None:
        return None

    async def progress(self, latest: GenerationChunk | None, queued: int | None) -> None:
        kwargs = {"view": self._view} if self._view is not None else {}
        content = progress_text(self.kind, latest, queued)
        edit = self.interaction.edit_original_response
        if await self._progress.offer(
            content, lambda: edit(content=content, allowed_mentions=NO_MENTIONS, **kwargs)
        ):
            self._view = None

    async def show(self, settled: Settled) -> Shown:
        view = (
            self.views.finished(settled.generation_id, settled.kind, settled.cut)
            if settled.rateable
            else None
        )
        return await deliver(self.interaction, final_pieces(settled), view)

    async def fail(self, text: str) -> None:
        await show_failure(self.interaction, text)

    async def notify(self, text: str) -> None:
        await self.interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)


async def deliver(
    interaction: discord.Interaction, pieces: list[str], view: discord.ui.View | None
) -> Shown:
    """Show `pieces` (the reply, then follow-ups) with `view` on the first."""
    try:
        message: discord.Message = await interaction.edit_original_response(
            content=pieces[0], view=view, allowed_mentions=NO_MENTIONS
        )
        followups: discord.abc.Messageable | discord.Webhook = interaction.followup
    except discord.HTTPException as exc:
        if not token_gone(exc):
            raise
        log.warning("the interaction token expired; posting the text in the channel")
        channel = interaction.client.get_partial_messageable(interaction.channel_id or 0)
        message = await channel.send(pieces[0], view=view, allowed_mentions=NO_MENTIONS)
        followups = channel
    sent = [await followups.send(piece, allowed_mentions=NO_MENTIONS) for piece in pieces[1:]]
    return Shown(message.id, [m.id for m in sent if m is not None])


async def show_failure(interaction: discord.Interaction, text: str) -> None:
    """Replace "thinking…" (or answer ephemerally) with what happened."""
    try:
        if interaction.response.is_done():
            await interaction.edit_original_response(
                content=text, embeds=[], view=None, allowed_mentions=NO_MENTIONS
            )
        else:
            await answer_ephemeral(interaction, text)
    except discord.HTTPException:
        log.warning("could not show a failure: %s", text)


async def run_in_reply(
    interaction: discord.Interaction, plan: Plan, views: ViewSet, slot: Slot | None = None
) -> int | None:
    """Generate `plan` into a new reply to `interaction`; returns the generation id."""
    app = app_of(interaction.client)
    reply = InteractionReply(interaction, app, views, plan.task)
    return await run(app, plan, where_of(interaction), reply, slot=slot)
