"""Write operations: plain functions `op(conn, ...)` that the single writer runs in its thread.

Each runs inside the writer's transaction (and its own savepoint), so a raise undoes just that
operation. Timestamps come in as arguments: the clock is read by the caller.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from storage.errors import ConversationGone, GenerationGone
from storage.rows import (
    VERDICT_NAMES,
    Conversation,
    FeedbackOutcome,
    GuildSettings,
    Thumbs,
    Winner,
    verdict_of,
)


def _live_generation(conn: sqlite3.Connection, generation_id: int) -> tuple[int, int, str]:
    """(user_id, root_id, status) of a generation that exists and is not deleted."""
    row = conn.execute(
        "SELECT user_id, root_id, status FROM generations WHERE id = ?", (generation_id,)
    ).fetchone()
    if row is None:
        raise GenerationGone(generation_id, "missing or forgotten")
    if row[2] == "deleted":
        raise GenerationGone(generation_id, "deleted")
    return row


def record_generation(conn: sqlite3.Connection, values: Mapping[str, Any]) -> int:
    """Insert a `running` generation; its root is its parent's root (or itself). `owner`, the
    instance that streams it (`storage.owners`), may be left out: then none does."""
    root_id = None
    if values["parent_id"] is not None:
        root_id = _live_generation(conn, values["parent_id"])[1]
    if values["conversation_id"] is not None:
        found = conn.execute(
            "SELECT 1 FROM conversations WHERE id = ?", (values["conversation_id"],)
        ).fetchone()
        if found is None:
            raise ConversationGone(values["conversation_id"])
    cursor = conn.execute(
        """INSERT INTO generations (parent_id, root_id, conversation_id, user_id, guild_id,
               channel_id, message_id, task, fields_json, messages_json, params_json, model_id,
               model_revision, status, created_utc, owner)
           VALUES (:parent_id, COALESCE(:root_id, -1), :conversation_id, :user_id, :guild_id,
               :channel_id, :message_id, :task, :fields_json, :messages_json, :params_json,
               :model_id, :model_revision, 'running', :created_utc, :owner)
           RETURNING id""",
        {"owner": None, **values, "root_id": root_id},
    )
    generation_id = cursor.fetchone()[0]
    if root_id is None:
        conn.execute("UPDATE generations SET root_id = id WHERE id = ?", (generation_id,))
    return generation_id


_EDIT_COPIES = "task, fields_json, messages_json, params_json, model_id, model_revision"


def record_edit(conn: sqlite3.Connection, original_id: int, values: Mapping[str, Any]) -> int:
    """Insert a finished `edit` generation: the original's prompt and model, the new text.

    It joins the original's conversation, so the conversation's privacy rules cover it.
    """
    original = conn.execute(
        "SELECT status, output FROM generations WHERE id = ?", (original_id,)
    ).fetchone()
    if original is None:
        raise GenerationGone(original_id, "missing or forgotten")
    if original[0] == "deleted":
        raise GenerationGone(original_id, "deleted")
    if values["output"].strip() == (original[1] or "").strip():
        raise ValueError("the edit is the same text as the original")
    cursor = conn.execute(
        f"""INSERT INTO generations (parent_id, root_id, conversation_id, user_id, guild_id,
               channel_id, message_id, {_EDIT_COPIES}, output, finish_reason, status, source,
               created_utc, finished_utc)
           SELECT id, root_id, conversation_id, :user_id, :guild_id, :channel_id, :message_id,
               {_EDIT_COPIES}, :output, 'stop', 'done', 'edit', :now, :now
           FROM generations WHERE id = :original_id
           RETURNING id""",
        {**values, "original_id": original_id},
    )
    return cursor.fetchone()[0]


def finish_generation(
    conn: sqlite3.Connection, generation_id: int, values: Mapping[str, Any]
) -> None:
    """Store the result; a generation deleted meanwhile stays `deleted`."""
    cursor = conn.execute(
        """UPDATE generations SET output = :output, finish_reason = :finish_reason,
               tokens_in = :tokens_in, tokens_out = :tokens_out, ttft_ms = :ttft_ms,
               total_ms = :total_ms, error = :error, finished_utc = :finished_utc,
               status = CASE WHEN status = 'deleted' THEN 'deleted' ELSE :status END
           WHERE id = :id""",
        {**values, "id": generation_id},
    )
    if cursor.rowcount == 0:
        raise GenerationGone(generation_id, "missing or forgotten")


def set_message_id(conn: sqlite3.Connection, generation_id: int, message_id: int) -> None:
    """Remember the Discord message that shows the generation."""
    cursor = conn.execute(
        "UPDATE generations SET message_id = ? WHERE id = ?", (message_id, generation_id)
    )
    if cursor.rowcount == 0:
        raise GenerationGone(generation_id, "missing or forgotten")


def set_followup_message_ids(
    conn: sqlite3.Connection, generation_id: int, message_ids: list[int]
) -> None:
    """Remember the follow-up messages a long reply continues in."""
    cursor = conn.execute(
        "UPDATE generations SET followup_message_ids_json = ? WHERE id = ?",
        (json.dumps(message_ids), generation_id),
    )
    if cursor.rowcount == 0:
        raise GenerationGone(generation_id, "missing or forgotten")


def mark_deleted(conn: sqlite3.Connection, generation_id: int, now: str) -> None:
    """Status `deleted` (idempotent): never exported, never rated again."""
    cursor = conn.execute(
        """UPDATE generations SET status = 'deleted', deleted_utc = COALESCE(deleted_utc, ?)
           WHERE id = ?""",
        (now, generation_id),
    )
    if cursor.rowcount == 0:
        raise GenerationGone(generation_id, "missing or forgotten")


def record_feedback(
    conn: sqlite3.Connection,
    generation_id: int,
    user_id: int,
    thumbs: Thumbs | None,
    stars: int | None,
    comment: str | None,
    now: str,
) -> FeedbackOutcome:
    """Upsert the rater's row (the latest action sets the verdict) and append an event."""
    verdict = None if thumbs is None and stars is None else verdict_of(thumbs, stars)
    owner = _live_generation(conn, generation_id)[0]
    is_self = int(owner == user_id)
    params = {
        "generation_id": generation_id,
        "user_id": user_id,
        "thumbs": thumbs,
        "stars": stars,
        "comment": comment or None,
        "comment_given": comment is not None,
        "verdict": verdict,
        "is_self": is_self,
        "now": now,
    }
    row = conn.execute(
        """INSERT INTO feedback (generation_id, user_id, thumbs, stars, comment, verdict, is_self,
               created_utc, updated_utc)
           VALUES (:generation_id, :user_id, :thumbs, :stars, :comment, COALESCE(:verdict, 0),
               :is_self, :now, :now)
           ON CONFLICT (generation_id, user_id) DO UPDATE SET
               thumbs = COALESCE(excluded.thumbs, feedback.thumbs),
               stars = COALESCE(excluded.stars, feedback.stars),
               comment = CASE WHEN :comment_given THEN excluded.comment ELSE feedback.comment END,
               verdict = COALESCE(:verdict, feedback.verdict),
               updated_utc = excluded.updated_utc
           RETURNING verdict""",
        params,
    ).fetchone()
    # The event's insert returns the new score: one statement fewer, so one round trip fewer
    # on PostgreSQL (the upsert above is an earlier statement: both engines see it).
    score = conn.execute(
        """INSERT INTO feedback_events (generation_id, user_id, thumbs, stars, comment, verdict,
               created_utc)
           VALUES (:generation_id, :user_id, :thumbs, :stars, :comment, :verdict, :now)
           RETURNING (SELECT COALESCE(SUM(verdict), 0) FROM feedback
               WHERE generation_id = :generation_id)""",
        params,
    ).fetchone()[0]
    return FeedbackOutcome(VERDICT_NAMES[row[0]], score, bool(is_self))


def record_comparison(
    conn: sqlite3.Connection,
    prompt: str,
    generation_a: int,
    generation_b: int,
    user_id: int,
    winner: Winner,
    now: str,
    final: bool = False,
) -> Winner | None:
    """One vote per user per pair of generations; voting again changes it, unless `final`:
    then a vote already cast stands, and its winner is returned (None: this vote counted).

    A vote on (B, A) replaces the same user's vote on (A, B): the later vote counts.
    """
    _live_generation(conn, generation_a)
    _live_generation(conn, generation_b)
    if final:
        cast = conn.execute(
            """SELECT generation_a_id, winner FROM comparisons WHERE user_id = ?
                   AND ((generation_a_id = ? AND generation_b_id = ?)
                     OR (generation_a_id = ? AND generation_b_id = ?))""",
            (user_id, generation_a, generation_b, generation_b, generation_a),
        ).fetchone()
        if cast is not None:
            first, standing = cast
            if first != generation_a and standing != "tie":  # stored the other way round
                standing = "B" if standing == "A" else "A"
            return standing
    conn.execute(
        """DELETE FROM comparisons
           WHERE generation_a_id = ? AND generation_b_id = ? AND user_id = ?""",
        (generation_b, generation_a, user_id),
    )
    conn.execute(
        """INSERT INTO comparisons (prompt, generation_a_id, generation_b_id, user_id, winner,
               created_utc, updated_utc)
           VALUES (?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (generation_a_id, generation_b_id, user_id) DO UPDATE SET
               winner = excluded.winner, prompt = excluded.prompt,
               updated_utc = excluded.updated_utc""",
        (prompt, generation_a, generation_b, user_id, winner, now, now),
    )
    return None


def create_conversation(
    conn: sqlite3.Connection,
    thread_id: int,
    user_id: int,
    guild_id: int | None,
    channel_id: int | None,
    now: str,
) -> Conversation:
    """The conversation of a thread, created on first use (idempotent)."""
    conn.execute(
        """INSERT INTO conversations (thread_id, user_id, guild_id, channel_id, created_utc)
           VALUES (?, ?, ?, ?, ?) ON CONFLICT (thread_id) DO NOTHING""",
        (thread_id, user_id, guild_id, channel_id, now),
    )
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM conversations WHERE thread_id = ?", (thread_id,))
        return Conversation.from_row(row.fetchone())
    finally:
        conn.row_factory = None


def update_guild_settings(
    conn: sqlite3.Connection, guild_id: int, changes: Mapping[str, Any], now: str
) -> GuildSettings:
    """Read-modify-write inside the transaction, so concurrent changes are never lost."""
    row = conn.execute(
        "SELECT settings_json FROM guild_settings WHERE guild_id = ?", (guild_id,)
    ).fetchone()
    current = GuildSettings.from_json(row[0]) if row else GuildSettings()
    settings = current.updated(changes)
    conn.execute(
        """INSERT INTO guild_settings (guild_id, settings_json, updated_utc) VALUES (?, ?, ?)
           ON CONFLICT (guild_id) DO UPDATE SET settings_json = excluded.settings_json,
               updated_utc = excluded.updated_utc""",
        (guild_id, settings.to_json(), now),
    )
    return settings


def set_opted_out(conn: sqlite3.Connection, user_id: int, opted_out: bool, now: str) -> None:
    """Opt the user out of (or back into) training exports."""
    conn.execute(
        """INSERT INTO users (user_id, opted_out, updated_utc) VALUES (?, ?, ?)
           ON CONFLICT (user_id) DO UPDATE SET opted_out = excluded.opted_out,
               updated_utc = excluded.updated_utc""",
        (user_id, int(opted_out), now),
    )


def mark_notice_shown(conn: sqlite3.Connection, user_id: int, now: str) -> bool:
    """Record that the first-use notice was shown; True only the first time."""
    cursor = conn.execute(
        """INSERT INTO users (user_id, notice_shown_utc, updated_utc) VALUES (?, ?, ?)
           ON CONFLICT (user_id) DO UPDATE SET notice_shown_utc = excluded.notice_shown_utc,
               updated_utc = excluded.updated_utc
           WHERE users.notice_shown_utc IS NULL""",
        (user_id, now, now),
    )
    return cursor.rowcount == 1


def encode_json(value: Any) -> str:
    """JSON for `*_json` columns: compact, Unicode kept as is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
