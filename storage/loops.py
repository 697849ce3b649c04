"""The learning loop's rows: each guild's loop (settings and state) and its history.

Writes are functions for the single writer; reads take the store's read connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiosqlite

from storage.db import format_utc
from storage.rows import LOOP_EVENTS, LOOP_STATES, LoopEvent, LoopState
from storage.writes import encode_json


class LoopRecords:
    """The `Store`'s methods for the learning loop (the store supplies `_write`, `_reader`
    and `_now`)."""

    _reader: aiosqlite.Connection
    _write: Callable[..., Awaitable[Any]]
    _now: Callable[[], str]

    async def get_loop(self, guild_id: int) -> LoopState:
        """The guild's learning loop (off, with the host's defaults, if never set)."""
        return await fetch_loop(self._reader, guild_id)

    async def enabled_loops(self) -> list[LoopState]:
        """Every guild whose loop is on."""
        return await fetch_enabled(self._reader)

    async def update_loop(self, guild_id: int, **changes: Any) -> LoopState:
        """Change the guild's loop settings or state; returns the new state."""
        values = loop_values(changes)  # validates in the caller's task
        return await self._write(write_loop, guild_id, values, self._now())

    async def add_loop_event(
        self,
        guild_id: int,
        event: str,
        model: str | None,
        reason: str,
        figures: Mapping[str, Any] | None = None,
    ) -> None:
        """Append to the guild's loop history (`LoopEvent`)."""
        await self._write(append_event, guild_id, event, model, reason, figures or {}, self._now())

    async def loop_history(self, guild_id: int, limit: int = 10) -> list[LoopEvent]:
        """The guild's loop events, newest first."""
        return await fetch_history(self._reader, guild_id, limit)


#: The columns `update_loop` may change, and how each is stored.
_COLUMNS = {
    "enabled": int,
    "channel_id": lambda v: v,
    "min_examples": lambda v: v,
    "min_votes": lambda v: v,
    "confidence": lambda v: v,
    "state": lambda v: v,
    "challenger": lambda v: v,
    "previous_default": lambda v: v,
    "rows_at_last_tune": int,
    "arena_since_utc": format_utc,
    "progress": encode_json,
}


def loop_values(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The column values of `changes` (validated): `progress` becomes `progress_json`."""
    unknown = sorted(set(changes) - set(_COLUMNS))
    if unknown:
        raise ValueError(f"not a loop setting: {unknown[0]}")
    if "state" in changes and changes["state"] not in LOOP_STATES:
        raise ValueError(f"state must be one of {LOOP_STATES}, not {changes['state']!r}")
    values = {}
    for name, value in changes.items():
        column = "progress_json" if name == "progress" else name
        values[column] = _COLUMNS[name](value) if value is not None else None
    return values


_UPDATE_LOOP = """UPDATE loops SET enabled = :enabled, channel_id = :channel_id,
        min_examples = :min_examples, min_votes = :min_votes, confidence = :confidence,
        state = :state, challenger = :challenger, previous_default = :previous_default,
        rows_at_last_tune = :rows_at_last_tune, arena_since_utc = :arena_since_utc,
        progress_json = :progress_json, updated_utc = :updated_utc
    WHERE guild_id = :guild_id"""


def write_loop(
    conn: sqlite3.Connection, guild_id: int, values: Mapping[str, Any], now: str
) -> LoopState:
    """Change some of a guild's loop columns (creating its row); returns the new state."""
    conn.execute(
        "INSERT INTO loops (guild_id, updated_utc) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (guild_id, now),
    )
    conn.row_factory = sqlite3.Row
    try:
        row = dict(conn.execute("SELECT * FROM loops WHERE guild_id = ?", (guild_id,)).fetchone())
        if values:
            row.update(values, updated_utc=now)
            conn.execute(_UPDATE_LOOP, row)
    finally:
        conn.row_factory = None
    return LoopState.from_row(row)


def append_event(
    conn: sqlite3.Connection,
    guild_id: int,
    event: str,
    model: str | None,
    reason: str,
    figures: Mapping[str, Any],
    now: str,
) -> None:
    if event not in LOOP_EVENTS:
        raise ValueError(f"event must be one of {LOOP_EVENTS}, not {event!r}")
    conn.execute(
        """INSERT INTO loop_events (guild_id, event, model, reason, figures_json, created_utc)
           VALUES (?, ?, ?, ?, ?, ?)""",
        (guild_id, event, model, reason, encode_json(dict(figures)), now),
    )


async def fetch_loop(conn: aiosqlite.Connection, guild_id: int) -> LoopState:
    """The guild's loop; a guild that never set it has the defaults (off)."""
    async with conn.execute("SELECT * FROM loops WHERE guild_id = ?", (guild_id,)) as cur:
        row = await cur.fetchone()
    return LoopState(guild_id) if row is None else LoopState.from_row(row)


async def fetch_enabled(conn: aiosqlite.Connection) -> list[LoopState]:
    rows = await conn.execute_fetchall("SELECT * FROM loops WHERE enabled != 0 ORDER BY guild_id")
    return [LoopState.from_row(row) for row in rows]


async def fetch_history(conn: aiosqlite.Connection, guild_id: int, limit: int) -> list[LoopEvent]:
    """The guild's loop events, newest first."""
    rows = await conn.execute_fetchall(
        "SELECT * FROM loop_events WHERE guild_id = ? ORDER BY id DESC LIMIT ?", (guild_id, limit)
    )
    return [LoopEvent.from_row(row) for row in rows]
