"""Schema migrations: an ordered list of plain functions, never edited once released.

`PRAGMA user_version` is how many have run. Each migration runs with its version bump in one
`BEGIN IMMEDIATE` transaction, so a crash leaves the file at the old or the new version, never
between. Migrations use `conn.execute` only: `executescript` would commit halfway.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import Callable, Sequence

from storage.errors import DatabaseTooNew

log = logging.getLogger("muse.storage.migrations")

Migration = Callable[[sqlite3.Connection], None]

_SCHEMA_1 = [
    """CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE users (
        user_id INTEGER PRIMARY KEY,
        opted_out INTEGER NOT NULL DEFAULT 0 CHECK (opted_out IN (0, 1)),
        notice_shown_utc TEXT,
        updated_utc TEXT NOT NULL
    )""",
    """CREATE TABLE guild_settings (
        guild_id INTEGER PRIMARY KEY,
        settings_json TEXT NOT NULL DEFAULT '{}',
        updated_utc TEXT NOT NULL
    )""",
    """CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        thread_id INTEGER NOT NULL UNIQUE,
        user_id INTEGER NOT NULL,
        guild_id INTEGER,
        channel_id INTEGER,
        created_utc TEXT NOT NULL
    )""",
    "CREATE INDEX conversations_user ON conversations (user_id)",
    """CREATE TABLE generations (
        id INTEGER PRIMARY KEY,
        parent_id INTEGER REFERENCES generations (id) ON DELETE SET NULL,
        root_id INTEGER NOT NULL,
        conversation_id INTEGER REFERENCES conversations (id) ON DELETE SET NULL,
        user_id INTEGER NOT NULL,
        guild_id INTEGER,
        channel_id INTEGER,
        message_id INTEGER,
        task TEXT NOT NULL,
        fields_json TEXT NOT NULL DEFAULT '{}',
        messages_json TEXT NOT NULL,
        params_json TEXT NOT NULL DEFAULT '{}',
        model_id TEXT NOT NULL,
        model_revision TEXT,
        output TEXT,
        finish_reason TEXT,
        tokens_in INTEGER,
        tokens_out INTEGER,
        ttft_ms REAL,
        total_ms REAL,
        status TEXT NOT NULL DEFAULT 'running' CHECK (status IN
            ('running', 'done', 'failed', 'cancelled', 'interrupted', 'deleted')),
        error TEXT,
        created_utc TEXT NOT NULL,
        finished_utc TEXT,
        deleted_utc TEXT
    )""",
    "CREATE INDEX generations_parent ON generations (parent_id)",
    "CREATE INDEX generations_root ON generations (root_id)",
    "CREATE INDEX generations_conversation ON generations (conversation_id)",
    "CREATE INDEX generations_user ON generations (user_id, id)",
    "CREATE INDEX generations_created ON generations (created_utc)",
    "CREATE INDEX generations_running ON generations (status) WHERE status = 'running'",
    """CREATE TABLE feedback (
        generation_id INTEGER NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL,
        thumbs TEXT CHECK (thumbs IN ('up', 'down')),
        stars INTEGER CHECK (stars BETWEEN 1 AND 5),
        comment TEXT,
        verdict INTEGER NOT NULL DEFAULT 0 CHECK (verdict IN (-1, 0, 1)),
        is_self INTEGER NOT NULL CHECK (is_self IN (0, 1)),
        created_utc TEXT NOT NULL,
        updated_utc TEXT NOT NULL,
        PRIMARY KEY (generation_id, user_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX feedback_user ON feedback (user_id)",
    """CREATE TABLE feedback_events (
        id INTEGER PRIMARY KEY,
        generation_id INTEGER NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL,
        thumbs TEXT,
        stars INTEGER,
        comment TEXT,
        verdict INTEGER,
        created_utc TEXT NOT NULL
    )""",
    "CREATE INDEX feedback_events_generation ON feedback_events (generation_id)",
    "CREATE INDEX feedback_events_user ON feedback_events (user_id)",
    """CREATE TABLE comparisons (
        id INTEGER PRIMARY KEY,
        prompt TEXT NOT NULL,
        generation_a_id INTEGER NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
        generation_b_id INTEGER NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL,
        winner TEXT NOT NULL CHECK (winner IN ('A', 'B', 'tie')),
        created_utc TEXT NOT NULL,
        updated_utc TEXT NOT NULL,
        UNIQUE (generation_a_id, generation_b_id, user_id)
    )""",
    "CREATE INDEX comparisons_b ON comparisons (generation_b_id)",
    "CREATE INDEX comparisons_user ON comparisons (user_id)",
]


def _initial_schema(conn: sqlite3.Connection) -> None:
    """Version 1: every table, and the random salt that pseudonymises user ids in exports."""
    for statement in _SCHEMA_1:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('export_salt', ?)", (secrets.token_hex(16),)
    )


def _followup_messages(conn: sqlite3.Connection) -> None:
    """Version 2: the follow-up messages a long reply continues in, so 🗑 deletes them too."""
    conn.execute(
        "ALTER TABLE generations ADD COLUMN followup_message_ids_json TEXT NOT NULL DEFAULT '[]'"
    )


def _edits_personas_models(conn: sqlite3.Connection) -> None:
    """Version 3: edits (`generations.source`), per-channel personas, the models registry."""
    conn.execute(
        """ALTER TABLE generations ADD COLUMN source TEXT NOT NULL DEFAULT 'model'
               CHECK (source IN ('model', 'edit'))"""
    )
    conn.execute(
        """CREATE TABLE personas (
            channel_id INTEGER PRIMARY KEY,
            guild_id INTEGER NOT NULL,
            name TEXT NOT NULL,
            prompt TEXT NOT NULL,
            updated_utc TEXT NOT NULL
        )"""
    )
    conn.execute(
        """CREATE TABLE models (
            name TEXT PRIMARY KEY,
            base_model TEXT NOT NULL,
            adapter_path TEXT NOT NULL,
            method TEXT NOT NULL,
            created_utc TEXT NOT NULL,
            data_json TEXT NOT NULL DEFAULT '{}',
            metrics_json TEXT NOT NULL DEFAULT '{}',
            retired_utc TEXT
        )"""
    )


def _model_owners_and_the_loop(conn: sqlite3.Connection) -> None:
    """Version 4: a model's owner (the guild whose data trained it; NULL: host-wide), the
    pseudonyms of the members whose rows trained it and why it was retired; each guild's
    learning loop (its settings and state) and the loop's history."""
    conn.execute("ALTER TABLE models ADD COLUMN owner_guild_id INTEGER")
    conn.execute("ALTER TABLE models ADD COLUMN contributors_json TEXT NOT NULL DEFAULT '[]'")
    conn.execute("ALTER TABLE models ADD COLUMN retired_reason TEXT")
    conn.execute(
        """CREATE TABLE loops (
            guild_id INTEGER PRIMARY KEY,
            enabled INTEGER NOT NULL DEFAULT 0,
            channel_id INTEGER,
            min_examples INTEGER,
            min_votes INTEGER,
            confidence REAL,
            state TEXT NOT NULL DEFAULT 'collecting'
                CHECK (state IN ('collecting', 'training', 'checking', 'arena')),
            challenger TEXT,
            previous_default TEXT,
            rows_at_last_tune INTEGER NOT NULL DEFAULT 0,
            arena_since_utc TEXT,
            progress_json TEXT NOT NULL DEFAULT '{}',
            updated_utc TEXT NOT NULL
        )"""
    )
    conn.execute(
        """CREATE TABLE loop_events (
            id INTEGER PRIMARY KEY,
            guild_id INTEGER NOT NULL,
            event TEXT NOT NULL
                CHECK (event IN ('tuned', 'arena', 'promoted', 'retired', 'rolled_back')),
            model TEXT,
            reason TEXT NOT NULL DEFAULT '',
            figures_json TEXT NOT NULL DEFAULT '{}',
            created_utc TEXT NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX loop_events_by_guild ON loop_events (guild_id, id)")


def _owners_and_shared_limits(conn: sqlite3.Connection) -> None:
    """Version 5: the instances (one per open store, with a heartbeat) that own the `running`
    generations they stream, and the limits every process shares: each running generation's
    slot (one per user), each guild's count of them, and each user's starts of the last minute.
    Times are integers (milliseconds since 1970), the same on every process and engine."""
    conn.execute(
        """CREATE TABLE instances (
            id TEXT PRIMARY KEY,
            machine TEXT,
            pid INTEGER NOT NULL,
            pid_start INTEGER,
            started_ms INTEGER NOT NULL,
            beat_ms INTEGER NOT NULL
        )"""
    )
    conn.execute("ALTER TABLE generations ADD COLUMN owner TEXT")
    conn.execute(
        """CREATE TABLE slots (
            id INTEGER PRIMARY KEY,
            user_id INTEGER NOT NULL UNIQUE,
            guild_id INTEGER,
            owner TEXT NOT NULL,
            started_ms INTEGER NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX slots_owner ON slots (owner)")
    conn.execute(
        """CREATE TABLE guild_slots (
            guild_id INTEGER PRIMARY KEY,
            running INTEGER NOT NULL DEFAULT 0
        )"""
    )
    conn.execute(
        """CREATE TABLE starts (
            user_id INTEGER NOT NULL,
            at_ms INTEGER NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX starts_user ON starts (user_id, at_ms)")


MIGRATIONS: Sequence[Migration] = (
    _initial_schema,
    _followup_messages,
    _edits_personas_models,
    _model_owners_and_the_loop,
    _owners_and_shared_limits,
)


def schema_version(conn: sqlite3.Connection) -> int:
    """How many migrations have run on this file."""
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(
    conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS, *, path: str = ""
) -> int:
    """Run the migrations this file has not had yet; return the final version.

    Safe when two processes open the same file at once: the version is re-read inside each
    write transaction. Raises `DatabaseTooNew` for a file from a newer Muse.
    """
    supported = len(migrations)
    version = schema_version(conn)  # fast path without the write lock: nothing to do
    if version > supported:
        raise DatabaseTooNew(path, version, supported)
    if version == supported:
        return version
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = schema_version(conn)
            if version > supported:
                raise DatabaseTooNew(path, version, supported)
            if version == supported:
                conn.execute("COMMIT")
                return version
            log.info("migrating %s to schema version %d", path or "database", version + 1)
            migrations[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1:d}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
