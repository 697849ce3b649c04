"""Deleting data: `/forget` (everything about one user) and the retention purge.

Both are write operations for the single writer. Counts are taken before deleting because
SQLite does not report rows removed by `ON DELETE CASCADE`.
"""

from __future__ import annotations

import json
import sqlite3

from storage.export_rows import Pseudonyms
from storage.pg_conn import try_transaction_lock
from storage.slots import forget_user_limits

#: The retention purge's advisory lock key on PostgreSQL (any fixed number: "purg" in ASCII).
RETENTION_LOCK = 0x70757267

#: Why `/forget` retired a model (`models.retired_reason`).
FORGOTTEN_CONTRIBUTOR = "trained on the rows of a member who used /forget"

# Generations that carry the user's words: their own (edits they made included), every
# descendant of those (a regeneration, continuation, branch or edit repeats the prompt), every
# generation in a conversation the user started, and every later turn of a conversation the
# user spoke in (the history repeats it). An edit is not speaking in the conversation: the
# history leaves edits out (`reads.conversation_history`; should it ever show them, drop the
# `mine.source` condition).
_DOOMED = """
WITH RECURSIVE doomed (id) AS (
    SELECT id FROM generations WHERE user_id = :user_id
    UNION
    SELECT g.id FROM generations AS g
        JOIN conversations AS c ON c.id = g.conversation_id
        WHERE c.user_id = :user_id
    UNION
    SELECT later.id FROM generations AS later
        JOIN generations AS mine ON mine.conversation_id = later.conversation_id
        WHERE mine.user_id = :user_id AND mine.source = 'model' AND later.id > mine.id
    UNION
    SELECT g.id FROM generations AS g JOIN doomed AS d ON g.parent_id = d.id
)
SELECT id FROM doomed"""

# The doomed ids as an `IN` list: the query itself, read before anything is deleted (both
# engines take a recursive query as a subquery; no JSON array, whose functions differ).
_IDS = f"({_DOOMED})"


def pseudonym(conn: sqlite3.Connection, user_id: int) -> str:
    """The user's pseudonym in exports (and so in `models.contributors_json`)."""
    salt = conn.execute("SELECT value FROM meta WHERE key = 'export_salt'").fetchone()[0]
    return Pseudonyms(salt).of(user_id)


def models_trained_on(conn: sqlite3.Connection, user_id: int) -> list[str]:
    """The live models whose training rows include the user's (read in Python: the registry
    is small, and the engines' JSON functions differ)."""
    member = pseudonym(conn, user_id)
    rows = conn.execute(
        "SELECT name, contributors_json FROM models WHERE retired_utc IS NULL ORDER BY name"
    )
    return [name for name, contributors in rows if member in json.loads(contributors)]


def forget_user(conn: sqlite3.Connection, user_id: int, now: str) -> dict[str, int]:
    """Remove every row about the user and retire every model their rows trained; returns how
    many rows of each table went (`models`: how many were retired)."""
    retired = models_trained_on(conn, user_id)
    conn.executemany(
        "UPDATE models SET retired_utc = ?, retired_reason = ? WHERE name = ?",
        [(now, FORGOTTEN_CONTRIBUTOR, name) for name in retired],
    )
    params = {"user_id": user_id}
    counts = {
        "generations": conn.execute(f"SELECT COUNT(*) FROM {_IDS} AS d", params).fetchone()[0]
    }
    for table in ("feedback", "feedback_events"):
        counts[table] = conn.execute(
            f"SELECT COUNT(*) FROM {table} WHERE user_id = :user_id OR generation_id IN {_IDS}",
            params,
        ).fetchone()[0]
    counts["comparisons"] = conn.execute(
        f"""SELECT COUNT(*) FROM comparisons WHERE user_id = :user_id
            OR generation_a_id IN {_IDS} OR generation_b_id IN {_IDS}""",
        params,
    ).fetchone()[0]
    for table in ("feedback", "feedback_events", "comparisons"):
        conn.execute(f"DELETE FROM {table} WHERE user_id = :user_id", params)
    # Cascades remove the feedback and comparisons of other users on these generations.
    conn.execute(f"DELETE FROM generations WHERE id IN {_IDS}", params)
    counts["conversations"] = conn.execute(
        "DELETE FROM conversations WHERE user_id = :user_id", params
    ).rowcount
    counts["users"] = conn.execute("DELETE FROM users WHERE user_id = :user_id", params).rowcount
    counts["models"] = len(retired)
    forget_user_limits(conn, user_id)  # seconds-old rows, not counted
    return counts


def purge_older_than(conn: sqlite3.Connection, cutoff_utc: str) -> dict[str, int] | None:
    """Delete generations created before `cutoff_utc` (with their ratings), and conversations
    older than that with no generation left. Returns counts per table, or None when another
    process is purging this database now (it holds `RETENTION_LOCK`): the purge happens once
    per database, and this process skips the round."""
    if not try_transaction_lock(conn, RETENTION_LOCK):
        return None
    params = {"cutoff": cutoff_utc}
    old = "(SELECT id FROM generations WHERE created_utc < :cutoff)"
    counts = {
        "generations": conn.execute(
            "SELECT COUNT(*) FROM generations WHERE created_utc < :cutoff", params
        ).fetchone()[0]
    }
    for table in ("feedback", "feedback_events"):
        counts[table] = conn.execute(
            f"SELECT COUNT(*) FROM {table} WHERE generation_id IN {old}", params
        ).fetchone()[0]
    counts["comparisons"] = conn.execute(
        f"""SELECT COUNT(*) FROM comparisons
            WHERE generation_a_id IN {old} OR generation_b_id IN {old}""",
        params,
    ).fetchone()[0]
    conn.execute("DELETE FROM generations WHERE created_utc < :cutoff", params)
    counts["conversations"] = conn.execute(
        """DELETE FROM conversations WHERE created_utc < :cutoff AND NOT EXISTS
               (SELECT 1 FROM generations AS g WHERE g.conversation_id = conversations.id)""",
        params,
    ).rowcount
    return counts
