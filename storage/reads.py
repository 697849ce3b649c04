"""Read queries over the store's read connection (aiosqlite, WAL: never blocks the writer)."""

from __future__ import annotations

import json
from collections.abc import Callable

import aiosqlite

from storage.rows import Conversation, Generation, GuildSettings


async def get_generation(conn: aiosqlite.Connection, generation_id: int) -> Generation | None:
    """A generation by id, whatever its status; None if missing or forgotten."""
    async with conn.execute("SELECT * FROM generations WHERE id = ?", (generation_id,)) as cur:
        row = await cur.fetchone()
    return None if row is None else Generation.from_row(row)


async def recent_generations(
    conn: aiosqlite.Connection, user_id: int, guild_id: int | None, limit: int
) -> list[Generation]:
    """The user's newest generations first, deleted ones left out."""
    rows = await conn.execute_fetchall(
        """SELECT * FROM generations
           WHERE user_id = :user_id AND status != 'deleted'
               AND (:guild_id IS NULL OR guild_id = :guild_id)
           ORDER BY id DESC LIMIT :limit""",
        {"user_id": user_id, "guild_id": guild_id, "limit": limit},
    )
    return [Generation.from_row(row) for row in rows]


async def data_guild_ids(conn: aiosqlite.Connection) -> list[int]:
    """The guilds with generations (deleted ones aside), ascending."""
    rows = await conn.execute_fetchall(
        """SELECT DISTINCT guild_id FROM generations
           WHERE guild_id IS NOT NULL AND status != 'deleted' ORDER BY guild_id"""
    )
    return [row[0] for row in rows]


async def children(conn: aiosqlite.Connection, generation_id: int) -> list[Generation]:
    """The generation's direct children (regenerations, continuations, edits), oldest first."""
    rows = await conn.execute_fetchall(
        "SELECT * FROM generations WHERE parent_id = ? AND status != 'deleted' ORDER BY id",
        (generation_id,),
    )
    return [Generation.from_row(row) for row in rows]


async def get_conversation(conn: aiosqlite.Connection, thread_id: int) -> Conversation | None:
    """The conversation bound to a Discord thread, if any."""
    async with conn.execute("SELECT * FROM conversations WHERE thread_id = ?", (thread_id,)) as cur:
        row = await cur.fetchone()
    return None if row is None else Conversation.from_row(row)


async def conversation_history(
    conn: aiosqlite.Connection,
    conversation_id: int,
    token_budget: int,
    count_tokens: Callable[[str], int],
) -> list[dict[str, str]]:
    """The newest finished turns that fit `token_budget`, oldest first, as chat messages.

    A turn is the user's message (the last user message the model saw) and the reply; turns
    are taken newest first and the first one that does not fit ends the history, so it stays
    contiguous. Edits are left out: a turn is what the model answered. (`retention.forget_user`
    relies on that: an editor's words reach no later turn.) Unknown conversations have no
    history.
    """
    turns: list[tuple[str, str]] = []
    used = 0
    async with conn.execute(
        """SELECT messages_json, output FROM generations
           WHERE conversation_id = ? AND status = 'done' AND output IS NOT NULL
               AND source = 'model'
           ORDER BY id DESC""",
        (conversation_id,),
    ) as cursor:
        async for messages_json, output in cursor:
            user_text = _last_user_message(json.loads(messages_json))
            cost = count_tokens(user_text) + count_tokens(output)
            if used + cost > token_budget:
                break
            used += cost
            turns.append((user_text, output))
    history: list[dict[str, str]] = []
    for user_text, output in reversed(turns):
        history.append({"role": "user", "content": user_text})
        history.append({"role": "assistant", "content": output})
    return history


def _last_user_message(messages: list[dict[str, str]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message.get("content", "")
    return ""


async def get_guild_settings(conn: aiosqlite.Connection, guild_id: int) -> GuildSettings:
    """The guild's settings; defaults (all None/empty) for a guild never configured."""
    async with conn.execute(
        "SELECT settings_json FROM guild_settings WHERE guild_id = ?", (guild_id,)
    ) as cur:
        row = await cur.fetchone()
    return GuildSettings() if row is None else GuildSettings.from_json(row[0])


async def is_opted_out(conn: aiosqlite.Connection, user_id: int) -> bool:
    """Whether the user opted out of training exports."""
    async with conn.execute("SELECT opted_out FROM users WHERE user_id = ?", (user_id,)) as cur:
        row = await cur.fetchone()
    return bool(row and row[0])
