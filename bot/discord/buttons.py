"""Buttons as `DynamicItem`s that carry their own behaviour: their state lives in
`muse:<action>:<generation id>[:<value>]`, so buttons on old messages keep working after a
restart. What a press does is the core's (`bot.core.actions`, `bot.core.plans`); a button
only answers."""

from __future__ import annotations

import contextlib
import io
import re
from typing import Any

import discord

from bot.core import actions, arena, plans, scenes
from bot.core.app import Muse
from bot.core.edits import editable, may_edit
from bot.core.plans import Plan
from bot.core.policy import texts_of
from bot.core.texts import DELETED
from bot.discord.admission import admitted
from bot.discord.app_errors import answer_failure
from bot.discord.context import actor_of, answer_ephemeral, app_of, where_of
from bot.discord.edit_reply import EditModal
from bot.discord.modals import StarsModal
from bot.discord.replies import run_in_reply
from generation.errors import OptionError
from generation.tasks.presets import DIALOGUE
from storage.rows import Generation, GuildSettings

Style = discord.ButtonStyle


class MuseButton(discord.ui.DynamicItem[discord.ui.Button], template=r"muse:base:(?P<id>\d+)"):
    """A button for one generation; subclasses set `action`, the template, the look, and
    `act` (what pressing it does)."""

    action = ""
    button_emoji: str | None = None
    button_label: str | None = None
    button_style = Style.secondary

    def __init__(self, generation_id: int, value: str = "") -> None:
        custom_id = f"muse:{self.action}:{generation_id}" + (f":{value}" if value else "")
        super().__init__(
            discord.ui.Button(
                style=self.button_style,
                emoji=self.button_emoji,
                label=self.button_label,
                custom_id=custom_id,
            )
        )
        self.generation_id = generation_id
        self.value = value

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> MuseButton:
        return cls(int(match["id"]), match.groupdict().get("value") or "")

    async def callback(self, interaction: discord.Interaction) -> None:
        """Run `act`; a failure is reported and answered (discord.py would only log it)."""
        try:
            await self.act(interaction)
        except Exception as exc:  # noqa: BLE001 - the presser always gets an answer
            await answer_failure(interaction, exc, f"button {self.custom_id}")

    async def act(self, interaction: discord.Interaction) -> None:
        """What pressing the button does: every concrete button overrides it."""
        raise NotImplementedError


class StopButton(MuseButton, template=r"muse:stop:(?P<id>\d+)"):
    """⏹: abort a generation that is still streaming (requester or Manage Messages)."""

    action, button_emoji, button_style = "stop", "⏹️", Style.danger

    async def act(self, interaction: discord.Interaction) -> None:
        app = app_of(interaction.client)
        await answer_ephemeral(
            interaction, actions.stop(app, self.generation_id, actor_of(interaction))
        )


class RateButton(MuseButton, template=r"muse:rate:(?P<id>\d+):(?P<value>up|down)"):
    """👍 / 👎: one vote per user, changeable."""

    action = "rate"

    def __init__(self, generation_id: int, value: str = "up") -> None:
        self.button_emoji = "👍" if value == "up" else "👎"
        super().__init__(generation_id, value)

    async def act(self, interaction: discord.Interaction) -> None:
        app = app_of(interaction.client)
        said = await actions.rate(app, self.generation_id, interaction.user.id, thumbs=self.value)
        await answer_ephemeral(interaction, said)


class StarsButton(MuseButton, template=r"muse:stars:(?P<id>\d+)"):
    """⭐: the stars modal."""

    action, button_emoji = "stars", "⭐"

    async def act(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(StarsModal(self.generation_id))


class FollowUpButton(MuseButton, template=r"muse:followup:(?P<id>\d+)"):
    """A button that starts a new generation from this one, as a new reply that belongs to
    the presser (subclasses say which task it is and how it is planned)."""

    def admission(self, app: Muse, parent: Generation) -> tuple[str, dict[str, Any]]:
        """The task and fields the guild's rules are checked against."""
        return parent.task, parent.fields

    def plan(self, app: Muse, parent: Generation, user_id: int, guild: GuildSettings) -> Plan:
        """The follow-up's plan: every concrete button overrides it."""
        raise NotImplementedError

    async def act(self, interaction: discord.Interaction) -> None:
        app = app_of(interaction.client)
        parent = await actions.live(app, self.generation_id)
        if parent is None:
            await answer_ephemeral(interaction, DELETED)
            return
        task, fields = self.admission(app, parent)
        async with admitted(interaction, task, texts_of(fields)) as admission:
            if admission is None:
                return
            try:
                plan = self.plan(app, parent, interaction.user.id, admission.settings)
            except OptionError as exc:  # e.g. a task a changed MUSE_PRESETS dropped
                await answer_ephemeral(interaction, f"⚠️ {exc}")
                return
            await run_in_reply(interaction, plan, VIEWS, admission.slot)


class RegenerateButton(FollowUpButton, template=r"muse:regen:(?P<id>\d+)"):
    """🔁: the same messages with a new seed."""

    action, button_emoji = "regen", "🔁"

    def plan(self, app: Muse, parent: Generation, user_id: int, guild: GuildSettings) -> Plan:
        return plans.regenerate_plan(app, parent, user_id, guild)


class DeleteButton(MuseButton, template=r"muse:delete:(?P<id>\d+)"):
    """🗑: delete the reply (and its follow-ups) and mark the generation deleted."""

    action, button_emoji = "delete", "🗑️"

    async def act(self, interaction: discord.Interaction) -> None:
        app = app_of(interaction.client)
        generation, refusal = await actions.may_delete(
            app, self.generation_id, actor_of(interaction)
        )
        if refusal is not None:
            await answer_ephemeral(interaction, refusal)
            return
        if interaction.message is not None:
            await interaction.message.delete()
        if generation is not None:
            channel = interaction.client.get_partial_messageable(interaction.channel_id or 0)
            for message_id in generation.followup_message_ids:  # ones already gone are skipped
                with contextlib.suppress(discord.NotFound):
                    await channel.get_partial_message(message_id).delete()
            await app.store.mark_deleted(self.generation_id)
        await answer_ephemeral(interaction, "🗑️ Deleted.")


class ContinueButton(FollowUpButton, template=r"muse:continue:(?P<id>\d+)"):
    """▶: a dialogue's next lines; any other text the token limit cut is written on."""

    action, button_emoji, button_label = "continue", "▶️", "Continue"

    def admission(self, app: Muse, parent: Generation) -> tuple[str, dict[str, Any]]:
        if app.kind_of(parent.task) != DIALOGUE:
            return parent.task, parent.fields
        return parent.task, scenes.follow_up(parent, branch=False)[0]

    def plan(self, app: Muse, parent: Generation, user_id: int, guild: GuildSettings) -> Plan:
        return plans.continuation(app, parent, user_id, guild)


class BranchButton(FollowUpButton, template=r"muse:branch:(?P<id>\d+)"):
    """🔀: an alternative next line of a dialogue."""

    action, button_emoji, button_label = "branch", "🔀", "Branch"

    def admission(self, app: Muse, parent: Generation) -> tuple[str, dict[str, Any]]:
        return parent.task, scenes.follow_up(parent, branch=True)[0]

    def plan(self, app: Muse, parent: Generation, user_id: int, guild: GuildSettings) -> Plan:
        return plans.scene_plan(app, parent, user_id, guild, branch=True)


class EditButton(MuseButton, template=r"muse:edit:(?P<id>\d+)"):
    """✏️: a modal holding the text, for any member to correct; the correction is an edit."""

    action, button_emoji = "edit", "✏️"

    async def act(self, interaction: discord.Interaction) -> None:
        app = app_of(interaction.client)
        generation, problem = await editable(app, self.generation_id)
        if generation is not None:
            problem = await may_edit(app, generation, where_of(interaction))
        if generation is None or problem is not None:
            await answer_ephemeral(interaction, problem or DELETED)
            return
        modal = EditModal(self.generation_id, generation.output or "", VIEWS)
        await interaction.response.send_modal(modal)


class ScriptButton(MuseButton, template=r"muse:script:(?P<id>\d+)"):
    """📄: the scene as JSON, plain text, Yarn Spinner and ink attachments (🔀 branches as
    options / choices), ephemeral."""

    action, button_emoji, button_label = "script", "📄", "Script"

    async def act(self, interaction: discord.Interaction) -> None:
        app = app_of(interaction.client)
        generation = await actions.live(app, self.generation_id)
        if generation is None:
            await answer_ephemeral(interaction, DELETED)
            return
        files = [
            discord.File(io.BytesIO(text.encode()), name)
            for name, text in await scenes.scene_files(app.store, generation, app.presets)
        ]
        await answer_ephemeral(interaction, "📄 The scene as a script:", files=files)


class CompareButton(MuseButton, template=r"muse:compare:(?P<id>\d+):(?P<value>\d+:(?:A|B|tie))"):
    """`muse:compare:<generation A>:<generation B>:<winner>`: one vote per user per pair."""

    action, button_style = "compare", Style.primary
    LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie"}

    def __init__(self, generation_id: int, value: str = "") -> None:
        self.button_label = self.LABELS[value.rpartition(":")[2]]
        super().__init__(generation_id, value)

    async def act(self, interaction: discord.Interaction) -> None:
        other, _, winner = self.value.partition(":")
        app = app_of(interaction.client)
        said = await actions.vote(app, self.generation_id, int(other), interaction.user.id, winner)
        await answer_ephemeral(interaction, said)


class ArenaButton(CompareButton, template=r"muse:arena:(?P<id>\d+):(?P<value>\d+:(?:A|B|tie))"):
    """`muse:arena:<generation A>:<generation B>:<winner>`: a blind vote; the answer reveals
    which model wrote A and B."""

    action = "arena"

    async def act(self, interaction: discord.Interaction) -> None:
        other, _, winner = self.value.partition(":")
        app = app_of(interaction.client)
        said = await actions.vote(
            app, self.generation_id, int(other), interaction.user.id, winner, final=True
        )
        if said.startswith("Thanks"):
            first = await app.store.get_generation(self.generation_id)
            second = await app.store.get_generation(int(other))
            said = f"{said}\n{arena.reveal(app.engine.model_id, first, second)}"
        await answer_ephemeral(interaction, said)


DYNAMIC_ITEMS: tuple[type[discord.ui.DynamicItem[Any]], ...] = (
    StopButton,
    RateButton,
    StarsButton,
    RegenerateButton,
    DeleteButton,
    ContinueButton,
    BranchButton,
    ScriptButton,
    EditButton,
    CompareButton,
    ArenaButton,
)


def _view(*items: discord.ui.Item[Any]) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for item in items:
        view.add_item(item)
    return view


class MuseViews:
    """The buttons each kind of reply carries (a `ViewSet`)."""

    def streaming(self, generation_id: int) -> discord.ui.View:
        """⏹ while the text streams."""
        return _view(StopButton(generation_id))

    def finished(self, generation_id: int, kind: str, cut: bool = False) -> discord.ui.View:
        """👍 👎 ⭐ 🔁 🗑 ✏️ (and ▶ 🔀 📄 for a task of the dialogue kind; ▶ for a text the
        limit cut)."""
        items: list[discord.ui.Item[Any]] = [
            RateButton(generation_id, "up"),
            RateButton(generation_id, "down"),
            StarsButton(generation_id),
            RegenerateButton(generation_id),
            DeleteButton(generation_id),
            EditButton(generation_id),
        ]
        if cut and kind != DIALOGUE:
            items.append(ContinueButton(generation_id))
        if kind == DIALOGUE:
            items += [
                ContinueButton(generation_id),
                BranchButton(generation_id),
                ScriptButton(generation_id),
            ]
        return _view(*items)

    def compare(self, generation_a: int, generation_b: int) -> discord.ui.View:
        """`A is better`, `B is better`, `Tie`."""
        winners = ("A", "B", "tie")
        return _view(*(CompareButton(generation_a, f"{generation_b}:{w}") for w in winners))

    def arena(self, generation_a: int, generation_b: int) -> discord.ui.View:
        """The same three votes, blind: the answer says which model wrote each side."""
        winners = ("A", "B", "tie")
        return _view(*(ArenaButton(generation_a, f"{generation_b}:{w}") for w in winners))

    def retry(self, generation_id: int) -> discord.ui.View:
        """🔁 alone: on a reply a restart cut off."""
        return _view(RegenerateButton(generation_id))


VIEWS = MuseViews()
