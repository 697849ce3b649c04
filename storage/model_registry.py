"""The models registry (base and tuned models, who owns them, who retired them and why): the
`Store`'s methods, the writer's operations and the reads."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiosqlite

from storage.db import format_utc
from storage.errors import ModelExists
from storage.rows import ModelRecord
from storage.writes import encode_json


class ModelRegistry:
    """The `Store`'s registry methods (the store supplies `_write`, `_reader` and `_now`)."""

    _reader: aiosqlite.Connection
    _write: Callable[..., Awaitable[Any]]
    _now: Callable[[], str]

    async def register_model(self, record: ModelRecord, *, replace: bool = False) -> None:
        """Add a model to the registry (`created_utc` None: now, `retired` True: retired now).

        Raises `ModelExists` for a name already there, unless `replace`: then the record
        overwrites it, and a retired model comes back unless `record.retired`.
        """
        values = model_values(record, self._now())  # validates
        await self._write(register_model, values, replace)

    async def get_model(self, name: str) -> ModelRecord | None:
        """A registered model by name, retired or not."""
        return await get_model(self._reader, name)

    async def list_models(self, include_retired: bool = False) -> list[ModelRecord]:
        """The registered models, newest first."""
        return await list_models(self._reader, include_retired)

    async def retire_model(self, name: str, reason: str | None = None) -> bool:
        """Stop offering a model (it stays registered), saying why; False if missing or
        retired already."""
        return await self._write(retire_model, name, self._now(), reason)


def model_values(record: ModelRecord, now: str) -> dict[str, Any]:
    """The `models` columns of a record about to be registered at `now` (validated)."""
    if not record.name.strip():
        raise ValueError("a model needs a name")
    return {
        "name": record.name,
        "base_model": record.base_model,
        "adapter_path": str(record.adapter_path),
        "method": record.method,
        "created_utc": now if record.created_utc is None else format_utc(record.created_utc),
        "data_json": encode_json(dict(record.data)),
        "metrics_json": encode_json(dict(record.metrics)),
        "retired_utc": now if record.retired else None,
        "owner_guild_id": record.owner_guild_id,
        "contributors_json": encode_json(sorted(set(record.contributors))),
        "retired_reason": record.retired_reason if record.retired else None,
    }


_INSERT_MODEL = """INSERT INTO models (name, base_model, adapter_path, method, created_utc,
        data_json, metrics_json, retired_utc, owner_guild_id, contributors_json, retired_reason)
    VALUES (:name, :base_model, :adapter_path, :method, :created_utc, :data_json, :metrics_json,
        :retired_utc, :owner_guild_id, :contributors_json, :retired_reason)"""

_REPLACE_MODEL = f"""{_INSERT_MODEL}
    ON CONFLICT (name) DO UPDATE SET base_model = excluded.base_model,
        adapter_path = excluded.adapter_path, method = excluded.method,
        created_utc = excluded.created_utc, data_json = excluded.data_json,
        metrics_json = excluded.metrics_json, retired_utc = excluded.retired_utc,
        owner_guild_id = excluded.owner_guild_id, contributors_json = excluded.contributors_json,
        retired_reason = excluded.retired_reason"""


def register_model(conn: sqlite3.Connection, values: Mapping[str, Any], replace: bool) -> None:
    """Insert a model; with `replace`, overwrite one of that name (and so un-retire it).

    Without `replace`, a name taken already inserts nothing and returns no row (one statement
    on either engine, so two processes registering one name cannot both win)."""
    if replace:
        conn.execute(_REPLACE_MODEL, values)
        return
    inserted = conn.execute(
        f"{_INSERT_MODEL} ON CONFLICT (name) DO NOTHING RETURNING name", values
    ).fetchone()
    if inserted is None:
        raise ModelExists(values["name"])


def retire_model(conn: sqlite3.Connection, name: str, now: str, reason: str | None = None) -> bool:
    """Mark a live model retired (saying why); False if it is missing or retired already."""
    cursor = conn.execute(
        """UPDATE models SET retired_utc = ?, retired_reason = ?
           WHERE name = ? AND retired_utc IS NULL""",
        (now, reason, name),
    )
    return cursor.rowcount == 1


async def get_model(conn: aiosqlite.Connection, name: str) -> ModelRecord | None:
    async with conn.execute("SELECT * FROM models WHERE name = ?", (name,)) as cur:
        row = await cur.fetchone()
    return None if row is None else ModelRecord.from_row(row)


async def list_models(conn: aiosqlite.Connection, include_retired: bool) -> list[ModelRecord]:
    """Newest first (ties by name)."""
    rows = await conn.execute_fetchall(
        """SELECT * FROM models WHERE :all OR retired_utc IS NULL
           ORDER BY created_utc DESC, name""",
        {"all": include_retired},
    )
    return [ModelRecord.from_row(row) for row in rows]
