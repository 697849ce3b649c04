"""Buttons as `DynamicItem`s: their state lives in `muse:<action>:<generation id>[:<value>]`,
so buttons on old messages keep working after a restart. Callbacks live in `bot.actions`."""

from __future__ import annotations

import re
from typing import Any

import discord

from bot import actions
from bot.errors import answer_failure

Style = discord.ButtonStyle


class MuseButton(discord.ui.DynamicItem[discord.ui.Button], template=r"muse:base:(?P<id>\d+)"):
    """A button for one generation; subclasses set `action`, the template and the look."""

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
        """What pressing the button does (subclasses)."""
        raise NotImplementedError


class StopButton(MuseButton, template=r"muse:stop:(?P<id>\d+)"):
    action, button_emoji, button_style = "stop", "⏹️", Style.danger

    async def act(self, interaction: discord.Interaction) -> None:
        await actions.stop(interaction, self.generation_id)


class RateButton(MuseButton, template=r"muse:rate:(?P<id>\d+):(?P<value>up|down)"):
    action = "rate"

    def __init__(self, generation_id: int, value: str = "up") -> None:
        self.button_emoji = "👍" if value == "up" else "👎"
        super().__init__(generation_id, value)

    async def act(self, interaction: discord.Interaction) -> None:
        await actions.rate(interaction, self.generation_id, self.value)


class StarsButton(MuseButton, template=r"muse:stars:(?P<id>\d+)"):
    action, button_emoji = "stars", "⭐"

    async def act(self, interaction: discord.Interaction) -> None:
        await actions.open_stars(interaction, self.generation_id)


class RegenerateButton(MuseButton, template=r"muse:regen:(?P<id>\d+)"):
    action, button_emoji = "regen", "🔁"

    async def act(self, interaction: discord.Interaction) -> None:
        await actions.regenerate(interaction, self.generation_id)


class DeleteButton(MuseButton, template=r"muse:delete:(?P<id>\d+)"):
    action, button_emoji = "delete", "🗑️"

    async def act(self, interaction: discord.Interaction) -> None:
        await actions.delete(interaction, self.generation_id)


class ContinueButton(MuseButton, template=r"muse:continue:(?P<id>\d+)"):
    action, button_emoji, button_label = "continue", "▶️", "Continue"

    async def act(self, interaction: discord.Interaction) -> None:
        await actions.continue_scene(interaction, self.generation_id, branch=False)


class BranchButton(MuseButton, template=r"muse:branch:(?P<id>\d+)"):
    action, button_emoji, button_label = "branch", "🔀", "Branch"

    async def act(self, interaction: discord.Interaction) -> None:
        await actions.continue_scene(interaction, self.generation_id, branch=True)


class ScriptButton(MuseButton, template=r"muse:script:(?P<id>\d+)"):
    action, button_emoji, button_label = "script", "📄", "Script"

    async def act(self, interaction: discord.Interaction) -> None:
        await actions.script(interaction, self.generation_id)


class CompareButton(MuseButton, template=r"muse:compare:(?P<id>\d+):(?P<value>\d+:(?:A|B|tie))"):
    """`muse:compare:<generation A>:<generation B>:<winner>`."""

    action, button_style = "compare", Style.primary
    LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie"}

    def __init__(self, generation_id: int, value: str = "") -> None:
        self.button_label = self.LABELS[value.rpartition(":")[2]]
        super().__init__(generation_id, value)

    async def act(self, interaction: discord.Interaction) -> None:
        other, _, winner = self.value.partition(":")
        await actions.compare_vote(interaction, self.generation_id, int(other), winner)


DYNAMIC_ITEMS: tuple[type[discord.ui.DynamicItem[Any]], ...] = (
    StopButton,
    RateButton,
    StarsButton,
    RegenerateButton,
    DeleteButton,
    ContinueButton,
    BranchButton,
    ScriptButton,
    CompareButton,
)


def _view(*items: discord.ui.Item[Any]) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for item in items:
        view.add_item(item)
    return view


def streaming_view(generation_id: int) -> discord.ui.View:
    """⏹ while the text streams."""
    return _view(StopButton(generation_id))


def finished_view(generation_id: int, task: str) -> discord.ui.View:
    """👍 👎 ⭐ 🔁 🗑 (and ▶ 🔀 📄 for a dialogue)."""
    items: list[discord.ui.Item[Any]] = [
        RateButton(generation_id, "up"),
        RateButton(generation_id, "down"),
        StarsButton(generation_id),
        RegenerateButton(generation_id),
        DeleteButton(generation_id),
    ]
    if task == "dialogue":
        items += [
            ContinueButton(generation_id),
            BranchButton(generation_id),
            ScriptButton(generation_id),
        ]
    return _view(*items)


def compare_view(generation_a: int, generation_b: int) -> discord.ui.View:
    """`A is better`, `B is better`, `Tie`."""
    return _view(*(CompareButton(generation_a, f"{generation_b}:{w}") for w in ("A", "B", "tie")))
