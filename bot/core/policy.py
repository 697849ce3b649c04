"""A guild's rules for starting a generation: enabled tasks, allowed channels, the blocklist,
the limits, an option's range. Parsing `/settings`' options is `bot/core/settings_options.py`'s.

Every command or button that starts a generation goes through `admit` (the Discord front end
wraps it in `bot.discord.admission.admitted`, which answers a refusal); so does a ✏️ edit
(`bot.core.edits.improve`): a member's text is training data, held to the same rules.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from bot.core.app import Muse
from bot.core.limits import Slot
from bot.core.model_choice import default_model
from bot.core.shared_limits import share
from generation.errors import OptionError
from storage.rows import GuildSettings, Persona

log = logging.getLogger("muse.bot.core.policy")


class Refused(Exception):
    """A start the guild's rules refuse; the message says why (and which rule)."""


def out_of_range(name: str, value: object, low: float, high: float) -> str | None:
    """Why a numeric option is unusable (not a number, NaN, or outside `low`..`high`), or None.

    Discord's clients validate ranges and types, but the API does not promise to: a value that
    did not convert arrives as it was sent."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and low <= value <= high:  # type: ignore[operator]
        return None
    shown = f"{value:g}" if number else repr(value)[:40]  # type: ignore[str-format]
    return f"{name} must be from {low:g} to {high:g}, not {shown}."


def check_range(name: str, value: float | None, low: float, high: float) -> None:
    """Re-validate a numeric option (raises `OptionError`); None passes."""
    problem = None if value is None else out_of_range(name, value, low, high)
    if problem:
        raise OptionError(problem)


def blocked_by(blocklist: Iterable[str], text: str) -> str | None:
    """The first rule `text` hits (whole words/phrases, any case), or None."""
    for rule in blocklist:
        pattern = r"(?<!\w)" + r"\s+".join(map(re.escape, rule.split())) + r"(?!\w)"
        if re.search(pattern, text, re.IGNORECASE):
            return rule
    return None


def withheld_text(rule: str) -> str:
    """What replaces an output that hit the blocklist."""
    return (
        f"🚫 The text was withheld: it contained `{rule}`, which this server's blocklist forbids."
    )


@dataclass(frozen=True, slots=True)
class Where:
    """Who starts what, where (a thread's parent channel counts as its channel)."""

    user_id: int
    guild_id: int | None
    channel_id: int | None
    parent_id: int | None = None


def check_rules(
    settings: GuildSettings, task: str, where: Where, texts: Iterable[str], what: str = "prompt"
) -> None:
    """Raise `Refused` when the task, the channel or a text is not allowed here; `what` names
    the texts in the refusal ("prompt", or "text" for an edit)."""
    if settings.enabled_tasks is not None and task not in settings.enabled_tasks:
        enabled = ", ".join(f"/{t}" for t in settings.enabled_tasks) or "none"
        raise Refused(f"🚫 /{task} is turned off on this server. Enabled here: {enabled}.")
    if settings.channels and not {where.channel_id, where.parent_id} & set(settings.channels):
        allowed = " ".join(f"<#{c}>" for c in settings.channels)
        raise Refused(f"🚫 Muse works only in {allowed} on this server — try again there.")
    for text in texts:
        rule = blocked_by(settings.blocklist, text)
        if rule is not None:
            raise Refused(
                f"🚫 Your {what} contains `{rule}`, which this server's blocklist forbids."
            )


async def guild_settings(app: Muse, guild_id: int | None) -> GuildSettings:
    """The guild's settings (defaults outside a guild)."""
    if guild_id is None:
        return GuildSettings()
    return await app.store.get_guild_settings(guild_id)


@dataclass(frozen=True, slots=True)
class Admission:
    """A start the rules allow: the guild's settings, the channel's persona, a running slot
    (release it when the generation is over)."""

    settings: GuildSettings
    persona: Persona | None
    slot: Slot
    model: str | None = None  # the registered model that writes here (None: the base)


async def channel_persona(app: Muse, where: Where) -> Persona | None:
    """The persona of the channel (a thread's parent channel) `where` is in, if any."""
    channel = where.parent_id or where.channel_id
    if where.guild_id is None or channel is None:
        return None
    return await app.store.get_persona(channel)


async def admit(
    app: Muse, task: str, where: Where, texts: Iterable[str], what: str = "prompt"
) -> Admission:
    """The guild's settings, the channel's persona and a running slot, or `Refused` /
    `Limited`."""
    settings = await guild_settings(app, where.guild_id)
    check_rules(settings, task, where, texts, what)
    persona = await channel_persona(app, where)
    if persona is not None:  # the blocklist may have grown since the persona was set
        rule = blocked_by(settings.blocklist, f"{persona.name}\n{persona.prompt}")
        if rule is not None:
            raise Refused(
                f"🚫 This channel's persona contains `{rule}`, which this server's blocklist "
                "forbids — a moderator can change it with /persona."
            )
    per_minute = settings.per_user_per_minute
    if per_minute is None:
        per_minute = app.settings.user_per_minute
    model = None
    if where.guild_id is not None:
        model = await default_model(app, settings, where.guild_id)
    slot = app.limits.acquire(where.user_id, where.guild_id, per_minute)
    await share(app, slot, per_minute)  # the database decides for every process
    return Admission(settings, persona, slot, model)


def texts_of(fields: dict[str, object]) -> list[str]:
    """The prompt texts among a command's fields."""
    return [value for value in fields.values() if isinstance(value, str)]
