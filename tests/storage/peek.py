"""Reading a test's database from outside the store, on either engine (a file or a URL)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import psycopg

from storage.pg_sql import translate


def rows(database: Path | str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """`sql` (SQLite's text, `?` placeholders) on its own connection, closed again."""
    if isinstance(database, str):
        with psycopg.connect(database) as conn:
            return [tuple(row) for row in conn.execute(translate(sql), args).fetchall()]
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return conn.execute(sql, args).fetchall()


def tables_with(database: Path | str, column: str) -> list[str]:
    """The tables that have `column`."""
    if isinstance(database, str):
        found = rows(
            database,
            """SELECT table_name FROM information_schema.columns
               WHERE table_schema = current_schema() AND column_name = ?""",
            column,
        )
        return sorted(name for (name,) in found)
    tables = rows(database, "SELECT name FROM sqlite_master WHERE type = 'table'")
    return sorted(
        name
        for (name,) in tables
        if (column,) in rows(database, "SELECT name FROM pragma_table_info(?)", name)
    )


def foreign_key_problems(database: Path | str) -> list[tuple[Any, ...]]:
    """Rows whose foreign keys point nowhere (PostgreSQL never lets one in)."""
    return [] if isinstance(database, str) else rows(database, "PRAGMA foreign_key_check")
