"""Personas, one per channel: the `Store`'s methods, the writer's operations and the reads."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiosqlite

from storage.rows import Persona


class PersonaRecords:
    """The `Store`'s persona methods (the store supplies `_write`, `_reader` and `_now`)."""

    _reader: aiosqlite.Connection
    _write: Callable[..., Awaitable[Any]]
    _now: Callable[[], str]

    async def set_persona(self, guild_id: int, channel_id: int, name: str, prompt: str) -> Persona:
        """Give the channel a persona (replacing its previous one); returns it."""
        if not name.strip() or not prompt.strip():
            raise ValueError("a persona needs a name and a prompt")
        values = dict(guild_id=guild_id, channel_id=channel_id, name=name, prompt=prompt)
        return await self._write(set_persona, {**values, "now": self._now()})

    async def get_persona(self, channel_id: int) -> Persona | None:
        """The channel's persona, if it has one."""
        return await get_persona(self._reader, channel_id)

    async def clear_persona(self, channel_id: int) -> bool:
        """Remove the channel's persona; True if it had one."""
        return await self._write(clear_persona, channel_id)


def set_persona(conn: sqlite3.Connection, values: Mapping[str, Any]) -> Persona:
    """Insert or replace the channel's persona; returns it as stored."""
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute(
            """INSERT INTO personas (channel_id, guild_id, name, prompt, updated_utc)
               VALUES (:channel_id, :guild_id, :name, :prompt, :now)
               ON CONFLICT (channel_id) DO UPDATE SET guild_id = excluded.guild_id,
                   name = excluded.name, prompt = excluded.prompt,
                   updated_utc = excluded.updated_utc
               RETURNING *""",
            values,
        ).fetchone()
        return Persona.from_row(row)
    finally:
        conn.row_factory = None


def clear_persona(conn: sqlite3.Connection, channel_id: int) -> bool:
    """Remove the channel's persona; True if it had one."""
    return conn.execute("DELETE FROM personas WHERE channel_id = ?", (channel_id,)).rowcount == 1


async def get_persona(conn: aiosqlite.Connection, channel_id: int) -> Persona | None:
    async with conn.execute("SELECT * FROM personas WHERE channel_id = ?", (channel_id,)) as cur:
        row = await cur.fetchone()
    return None if row is None else Persona.from_row(row)
