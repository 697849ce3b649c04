"""Everything the emulated Discord knows, plus change notification for waiters."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .messages import MessageRecord
from .models import Channel, Guild, Snowflakes, User

if TYPE_CHECKING:
    from .interactions import InteractionRecord

T = TypeVar("T")


@dataclass(frozen=True)
class RequestLog:
    """One REST request the emulator answered."""

    method: str
    path: str
    status: int
    at: float  # time.monotonic()


@dataclass
class EmulatorState:
    """Users, guilds, messages, interactions and synced commands."""

    token: str
    application_id: int
    bot_user: User
    ids: Snowflakes
    users: dict[int, User] = field(default_factory=dict)
    guilds: dict[int, Guild] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    messages: dict[int, MessageRecord] = field(default_factory=dict)
    interactions: dict[int, InteractionRecord] = field(default_factory=dict)
    tokens: dict[str, InteractionRecord] = field(default_factory=dict)
    commands: dict[int | None, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[RequestLog] = field(default_factory=list)
    unhandled: list[str] = field(default_factory=list)
    base_url: str = ""
    token_ttl_s: float = 15 * 60
    callback_deadline_s: float | None = 3.0
    _changed: asyncio.Event | None = None

    # --- change notification -------------------------------------------------------------

    def notify(self) -> None:
        """Wake every waiter so it re-checks its predicate."""
        if self._changed is not None:
            self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float = 5.0,  # noqa: ASYNC109
        what: str | None = None,
    ) -> T:
        """Return the first truthy ``predicate()``; re-checked on every change, no sleeping."""
        deadline = time.monotonic() + timeout
        while True:
            if self._changed is None:
                self._changed = asyncio.Event()
            event = self._changed
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                label = what or getattr(predicate, "__name__", "condition")
                raise TimeoutError(f"emulator: {label} not met within {timeout:.1f} s")
            with contextlib.suppress(TimeoutError):  # also re-check time-based conditions
                await asyncio.wait_for(event.wait(), min(remaining, 0.25))

    # --- look-ups -----------------------------------------------------------------------

    def user(self, ref: User | int | str) -> User:
        """A user by object, id or name."""
        if isinstance(ref, User):
            return ref
        if isinstance(ref, int):
            return self.users[ref]
        for user in self.users.values():
            if user.name == ref:
                return user
        raise KeyError(f"no user named {ref!r}")

    def guild(self, ref: Guild | int | str | None = None) -> Guild:
        """A guild by object, id or name; the first guild when ``None``."""
        if isinstance(ref, Guild):
            return ref
        if ref is None:
            return next(iter(self.guilds.values()))
        if isinstance(ref, int):
            return self.guilds[ref]
        for guild in self.guilds.values():
            if guild.name == ref:
                return guild
        raise KeyError(f"no guild named {ref!r}")

    def channel(self, ref: Channel | int | str | None, guild: Guild | None = None) -> Channel:
        """A channel by object, id or name; the guild's first text channel when ``None``."""
        if isinstance(ref, Channel):
            return ref
        if isinstance(ref, int):
            return self.channels[ref]
        guild = guild or self.guild()
        if ref is None:
            return guild.text_channels[0]
        return guild.channel(ref)

    def find_command(self, name: str, guild_id: int | None) -> dict[str, Any]:
        """A synced command by name: the guild's first, then global."""
        for scope in (guild_id, None):
            for command in self.commands.get(scope, []):
                if command["name"] == name and command.get("type", 1) == 1:
                    return command
        raise LookupError(f"command /{name} is not synced (guild {guild_id} or global)")

    def bot_messages(self) -> list[MessageRecord]:
        """Messages the bot created, oldest first."""
        return [m for m in self.messages.values() if m.author.id == self.bot_user.id]
