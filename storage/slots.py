"""The limits every process shares: one running generation per user, a guild's cap on running
generations, and a user's starts per minute (a sliding window).

Each check is one atomic statement, so two processes can never both pass it: the user's slot
is an insert that a UNIQUE user id refuses; the minute's start is an `INSERT ... SELECT` that
inserts only while fewer than the limit are in the window (the user's slot, inserted first in
the same transaction, serialises one user's starts); the guild's count is a conditional
upsert of one row. A refusal raises `SlotRefused`, which undoes the whole take.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from storage.errors import StoreClosed
from storage.instances import Instance

log = logging.getLogger("muse.storage.slots")

WINDOW_MS = 60_000

Rule = Literal["running", "per_minute", "guild"]


class SlotRefused(Exception):
    """A start the shared limits refuse: which `rule`, and for `per_minute`, the seconds until
    the user may start again."""

    def __init__(self, rule: Rule, retry_after_s: float | None = None) -> None:
        super().__init__(rule)
        self.rule = rule
        self.retry_after_s = retry_after_s


def take_slot(
    conn: sqlite3.Connection,
    owner: str,
    user_id: int,
    guild_id: int | None,
    per_minute: int,
    guild_cap: int,
    now_ms: int,
) -> int:
    """The new slot's id, or `SlotRefused` (nothing taken). 0 = no limit, for both numbers."""
    slot = conn.execute(
        """INSERT INTO slots (user_id, guild_id, owner, started_ms) VALUES (?, ?, ?, ?)
           ON CONFLICT (user_id) DO NOTHING RETURNING id""",
        (user_id, guild_id, owner, now_ms),
    ).fetchone()
    if slot is None:
        raise SlotRefused("running")
    window = now_ms - WINDOW_MS
    conn.execute("DELETE FROM starts WHERE user_id = ? AND at_ms <= ?", (user_id, window))
    started = conn.execute(
        """INSERT INTO starts (user_id, at_ms) SELECT ?, ?
           WHERE ? <= 0 OR (SELECT COUNT(*) FROM starts WHERE user_id = ? AND at_ms > ?) < ?""",
        (user_id, now_ms, per_minute, user_id, window, per_minute),
    ).rowcount
    if not started:
        nth = conn.execute(
            """SELECT at_ms FROM starts WHERE user_id = ? AND at_ms > ?
               ORDER BY at_ms DESC LIMIT 1 OFFSET ?""",
            (user_id, window, per_minute - 1),
        ).fetchone()[0]
        raise SlotRefused("per_minute", (nth + WINDOW_MS - now_ms) / 1000)
    if guild_id is not None:
        counted = conn.execute(
            """INSERT INTO guild_slots (guild_id, running) VALUES (?, 1)
               ON CONFLICT (guild_id) DO UPDATE SET running = guild_slots.running + 1
               WHERE ? <= 0 OR guild_slots.running < ? RETURNING running""",
            (guild_id, guild_cap, guild_cap),
        ).fetchone()
        if counted is None:
            raise SlotRefused("guild")
    return slot[0]


def release_slot(conn: sqlite3.Connection, slot_id: int) -> None:
    """Free a slot (idempotent: a slot freed already, or taken from a gone owner, is none)."""
    _free(conn, conn.execute("DELETE FROM slots WHERE id = ? RETURNING guild_id", (slot_id,)))


def forget_user_limits(conn: sqlite3.Connection, user_id: int) -> None:
    """/forget: the user's running slot and their starts of the last minute go too."""
    conn.execute("DELETE FROM starts WHERE user_id = ?", (user_id,))
    _free(conn, conn.execute("DELETE FROM slots WHERE user_id = ? RETURNING guild_id", (user_id,)))


def _free(conn: sqlite3.Connection, deleted: sqlite3.Cursor) -> None:
    """Count down the guild of the slot `deleted` returned (if a slot was deleted)."""
    row = deleted.fetchone()
    if row is not None and row[0] is not None:
        conn.execute(
            "UPDATE guild_slots SET running = running - 1 WHERE guild_id = ? AND running > 0",
            (row[0],),
        )


class Slots:
    """The `Store`'s shared limits (the store supplies `_write` and `instance`)."""

    _write: Callable[..., Awaitable[Any]]
    instance: Instance

    async def take_slot(
        self,
        user_id: int,
        guild_id: int | None,
        *,
        per_minute: int,
        guild_cap: int,
        now_s: float,
    ) -> int:
        """A running slot for the user, counted as a start at `now_s` (seconds since 1970, the
        same clock in every process); its id. Raises `SlotRefused` for a limit reached: one
        running per user, `per_minute` starts a minute, `guild_cap` running in the guild."""
        values = (user_id, guild_id, per_minute, guild_cap, int(now_s * 1000))
        taking = asyncio.ensure_future(self._write(take_slot, self.instance.id, *values))
        try:
            return await asyncio.shield(taking)
        except asyncio.CancelledError:  # the write goes on: free the slot if it was taken
            taking.add_done_callback(self._free_if_taken)
            raise

    def _free_if_taken(self, taking: asyncio.Future[int]) -> None:
        if not taking.cancelled() and taking.exception() is None:
            self.release_slot_soon(taking.result())

    def release_slot_soon(self, slot_id: int) -> None:
        """Free a slot without waiting for the write (it commits with the next group); a slot
        that cannot be freed is freed when this store closes, or its heartbeat expires."""
        try:
            future = self._write(release_slot, slot_id)
        except (StoreClosed, RuntimeError):  # closed, or no event loop: `leave` frees it
            return
        asyncio.ensure_future(future).add_done_callback(_log_failure)


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not free a running slot: %s", future.exception())
