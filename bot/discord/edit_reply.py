"""✏️ Improve in Discord: the modal holding the reply's text, and the improved text posted as a
new reply linked to the original, with rating buttons of its own."""

from __future__ import annotations

import logging
from typing import Protocol

import discord

from bot.core.app import Muse
from bot.core.edits import EDIT_LIMIT, Improved, improve
from bot.core.errors import report
from bot.core.records import remember_messages
from bot.discord import rendering
from bot.discord.context import NO_MENTIONS, answer_ephemeral, app_of, where_of
from bot.discord.replies import compose

log = logging.getLogger("muse.bot.discord.edit_reply")


class EditViews(Protocol):
    def finished(self, generation_id: int, kind: str, cut: bool = False) -> discord.ui.View: ...


def edit_pieces(improved: Improved, editor: str, kind: str) -> list[str]:
    """The edit's messages: who improved which reply, the text, a footer saying what it is."""
    original = improved.original
    link = rendering.jump_link(original)
    source = f"[this reply]({link})" if link else f"text #{original.id}"
    body = f"✏️ Improved by {editor} from {source}\n\n"
    body += rendering.render_output(kind, improved.text)
    tail = f"-# ✏️ a member's correction · based on {original.model_id} · AI-generated, then edited"
    return compose(body, tail)


class EditModal(discord.ui.Modal, title="Improve this text"):
    """The reply's text, for a member to correct (Discord's paragraph field: 4,000 characters)."""

    def __init__(self, generation_id: int, text: str, views: EditViews) -> None:
        super().__init__(custom_id=f"muse:editmodal:{generation_id}")
        self.generation_id = generation_id
        self.views = views
        self.text: discord.ui.TextInput = discord.ui.TextInput(
            label="The improved text",
            custom_id="text",
            style=discord.TextStyle.paragraph,
            default=text,
            max_length=EDIT_LIMIT,
        )
        self.add_item(self.text)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        app = app_of(interaction.client)
        improved, problem = await improve(
            app, self.generation_id, self.text.value, where_of(interaction)
        )
        if improved is None:
            await answer_ephemeral(interaction, problem or "")
            return
        await post_edit(interaction, app, improved, self.views)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await answer_ephemeral(interaction, report(error, "edit modal"))


async def post_edit(
    interaction: discord.Interaction, app: Muse, improved: Improved, views: EditViews
) -> None:
    """The edit as a new reply (no ping), its rating buttons on the first message."""
    kind = app.kind_of(improved.original.task)
    pieces = edit_pieces(improved, interaction.user.mention, kind)
    view = views.finished(improved.generation_id, kind)
    sent_first = await interaction.response.send_message(
        pieces[0], view=view, allowed_mentions=NO_MENTIONS
    )
    message = sent_first.resource
    if not isinstance(message, discord.InteractionMessage):
        message = await interaction.original_response()
    sent = [
        await interaction.followup.send(piece, allowed_mentions=NO_MENTIONS, wait=True)
        for piece in pieces[1:]
    ]
    await remember_messages(app, improved.generation_id, message.id, [m.id for m in sent])
