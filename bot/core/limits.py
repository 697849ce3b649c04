"""In-memory limits (per process): generations a user may start per minute (a sliding window),
one running generation per user, and a cap on running generations per guild.

    slot = limits.acquire(user_id, guild_id, per_minute=6)   # raises Limited
    try: ...
    finally: slot.release()

These are the fast path: what this process knows refuses without a database round trip. The
database decides for every process sharing it (`bot.core.shared_limits`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

WINDOW_S = 60.0

ALREADY_RUNNING = (
    "⏳ You already have a text being written — try again in a moment, "
    "when it has finished (or stop it with ⏹)."
)


class Limited(Exception):
    """A start was refused; `message` says why and when to try again."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


def too_many_starts(per_minute: int, wait_s: float) -> Limited:
    """The per-minute limit is used up for `wait_s` more seconds."""
    return Limited(
        f"⏳ You can start {per_minute} texts a minute — try again in "
        f"{max(1, math.ceil(wait_s))} s.",
        wait_s,
    )


def guild_busy(cap: int) -> Limited:
    """The guild has `cap` generations running."""
    return Limited(
        f"⏳ This server already has {cap} texts being written — try again in a few seconds."
    )


@dataclass
class Slot:
    """A running generation's place; `release` is idempotent."""

    limits: Limits
    user_id: int
    guild_id: int | None
    released: bool = False
    started: float | None = None  # when its start was counted (`withdraw` uncounts it)
    on_release: Callable[[], None] | None = None  # frees its shared slot, when it holds one

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limits._release(self)
            if self.on_release is not None:
                self.on_release()

    def withdraw(self) -> None:
        """Release the slot and uncount its start: the start did not happen after all."""
        self.release()
        starts = self.limits._starts.get(self.user_id)
        if starts is not None and self.started in starts:
            starts.remove(self.started)


@dataclass
class Limits:
    """Sliding-window starts per user, running slots per user (one) and per guild (a cap)."""

    guild_concurrency: int = 0  # 0 = no cap
    # seconds since 1970: the shared limits count the same starts in every process and machine
    clock: Callable[[], float] = time.time
    _starts: dict[int, deque[float]] = field(default_factory=dict)
    _running_users: set[int] = field(default_factory=set)
    _running_guilds: dict[int, int] = field(default_factory=dict)

    def acquire(self, user_id: int, guild_id: int | None, per_minute: int) -> Slot:
        """Take a running slot and count a start, or raise `Limited` (nothing taken then)."""
        if user_id in self._running_users:
            raise Limited(ALREADY_RUNNING)
        wait = self.retry_after(user_id, per_minute)
        if wait is not None:
            raise too_many_starts(per_minute, wait)
        cap = self.guild_concurrency
        if guild_id is not None and cap and self._running_guilds.get(guild_id, 0) >= cap:
            raise guild_busy(cap)
        started = self.clock()
        self._starts.setdefault(user_id, deque()).append(started)
        self._running_users.add(user_id)
        if guild_id is not None:
            self._running_guilds[guild_id] = self._running_guilds.get(guild_id, 0) + 1
        return Slot(self, user_id, guild_id, started=started)

    def retry_after(self, user_id: int, per_minute: int) -> float | None:
        """Seconds until the user may start again; None if they may now (0 = no limit)."""
        starts = self._starts.get(user_id)
        if not starts or per_minute <= 0:
            return None
        now = self.clock()
        while starts and starts[0] <= now - WINDOW_S:
            starts.popleft()
        if not starts:
            del self._starts[user_id]
            return None
        if len(starts) < per_minute:
            return None
        return starts[-per_minute] + WINDOW_S - now

    def running(self, guild_id: int) -> int:
        """Running generations in a guild."""
        return self._running_guilds.get(guild_id, 0)

    def _release(self, slot: Slot) -> None:
        self._running_users.discard(slot.user_id)
        if slot.guild_id is not None:
            left = self._running_guilds.get(slot.guild_id, 0) - 1
            if left > 0:
                self._running_guilds[slot.guild_id] = left
            else:
                self._running_guilds.pop(slot.guild_id, None)
