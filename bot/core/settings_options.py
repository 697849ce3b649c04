"""The `/settings` options: each parsed from what a moderator typed, and the settings as
`/settings` shows them (pure functions, tested without Discord). The rules they set are
`bot/core/policy.py`'s.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from bot.core.policy import Refused
from generation.tasks.presets import TASKS
from storage.rows import GuildSettings

CHANNEL = re.compile(r"^(?:<#(\d+)>|(\d+))$")


def split_list(raw: str) -> list[str]:
    """A comma list, trimmed, empties dropped ("" = clear)."""
    return [part.strip() for part in raw.split(",") if part.strip()]


def parse_tasks(raw: str, tasks: Sequence[str] = TASKS) -> tuple[str, ...] | None:
    """Names of `tasks` (the loaded presets'; default the built-in ones); unknown names are
    refused; "" = every task (None)."""
    names = [name.lower().lstrip("/") for name in split_list(raw)]
    unknown = [name for name in names if name not in tasks]
    if unknown:
        raise Refused(f"Unknown task {', '.join(unknown)}; the tasks are {', '.join(tasks)}.")
    return tuple(dict.fromkeys(names)) or None


def parse_channels(raw: str) -> tuple[int, ...]:
    """Channel ids or <#id> mentions; "" = every channel."""
    ids = []
    for part in split_list(raw):
        match = CHANNEL.match(part)
        if match is None:
            raise Refused(f"{part!r} is not a channel: use #channel mentions or ids.")
        ids.append(int(match[1] or match[2]))
    return tuple(dict.fromkeys(ids))


def parse_blocklist(raw: str) -> tuple[str, ...]:
    """Words or phrases (case-insensitive); "" = no blocklist."""
    return tuple(dict.fromkeys(word.lower() for word in split_list(raw)))


def describe(settings: GuildSettings, bot_default_per_minute: int) -> str:
    """The settings as shown by `/settings` with no option."""
    tasks = ", ".join(settings.enabled_tasks) if settings.enabled_tasks else "all"
    channels = " ".join(f"<#{c}>" for c in settings.channels) or "all"
    blocklist = ", ".join(f"`{w}`" for w in settings.blocklist) or "none"
    per_minute = settings.per_user_per_minute
    return "\n".join(
        [
            "**Muse settings for this server**",
            f"temperature: {_or_default(settings.temperature)}",
            f"max_tokens: {_or_default(settings.max_tokens)}",
            "per_user_per_minute: "
            + (
                str(per_minute) if per_minute is not None else f"{bot_default_per_minute} (default)"
            ),
            f"enabled_tasks: {tasks}",
            f"channels: {channels}",
            f"blocklist: {blocklist}",
        ]
    )


def _or_default(value: object) -> str:
    return "preset default" if value is None else str(value)
