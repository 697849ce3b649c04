"""A process that owns a `Store` and runs its methods on request, for the durability tests.

One JSON object a line on standard input: `{"op": METHOD, "args": [...], "kwargs": {...}}`;
one JSON line back once the call returned (the acknowledgement): `{"ok": RESULT}` or
`{"error": "ExceptionName: message"}`. Beside the store's own methods:
- `snapshot`: every table, as this process's store reads it (its own read connection);
- `open_again`: `Store.open` on the same file in this process (it must be refused);
- `travel`: move the store's clock forward by `days` (for the retention purge).
Run as `python -m tests.storage.store_child PATH`; SIGKILL is how the tests end it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from storage.rows import ModelRecord
from storage.store import Store

START = datetime(2025, 1, 1, tzinfo=UTC)


class Clock:
    """Moves one second a call, so every row has its own time; `travel` jumps ahead."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


async def snapshot(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table but the heartbeats, through the store's own read connection: what
    this process believes the file holds."""
    reader = store._reader  # the view to compare with other processes' is the store's own
    tables = [
        row[0]
        for row in await reader.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " AND name != 'instances'"
        )
    ]
    return {
        table: [dict(row) for row in await reader.execute_fetchall(f"SELECT * FROM {table}")]
        for table in sorted(tables)
    }


def plain(value: Any) -> Any:
    """A result as JSON can carry it."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


async def call(store: Store, clock: Clock, request: dict[str, Any]) -> Any:
    op, args, kwargs = request["op"], request.get("args", []), request.get("kwargs", {})
    if op == "snapshot":
        return await snapshot(store)
    if op == "open_again":
        again = await Store.open(store.path, mark_interrupted=False)  # must raise
        await again.close()
        return "opened"
    if op == "travel":
        clock.now += timedelta(days=args[0])
        return None
    if op == "register_model":
        return await store.register_model(ModelRecord(**args[0]), **kwargs)
    if op == "export":
        out = io.StringIO()
        return await store.export(args[0], out)
    if op == "backup":
        return await store.backup(args[0], overwrite=True)
    return await getattr(store, op)(*args, **kwargs)


async def main(path: str) -> None:
    clock = Clock()
    loop = asyncio.get_running_loop()
    async with Store.open(path, clock=clock) as store:
        print(json.dumps({"ok": "ready"}), flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            try:
                answer = {"ok": plain(await call(store, clock, json.loads(line)))}
            except Exception as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
