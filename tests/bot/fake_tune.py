"""Stands in for `muse loop tune` in the fast loop tests: the same name, registration and
hand-over to the loop, no training (the real one is exercised by the loop's end-to-end test).

    python -m tests.bot.fake_tune --guild ID [--dry-run]     (MUSE_DB names the database)

`FAKE_TUNE_LOSS=worse` registers a model whose held-out loss got worse.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import sqlite3
import sys
from pathlib import Path

from bot.cli.loop import _hand_over, _next_name
from storage.export import ExportFilters
from storage.rows import ModelRecord
from storage.store import Store


async def main(guild_id: int, dry_run: bool, max_steps: int | None = None) -> int:
    db = Path(os.environ["MUSE_DB"])
    async with Store.open(db, mark_interrupted=False) as store:
        rows = await store.export("kto", io.StringIO(), ExportFilters(guild_id=guild_id))
    if rows == 0:
        print("muse tune: would not train: there are no rated texts yet", file=sys.stderr)
        return 2
    if dry_run:
        print(f"would train: {rows} rows")
        return 0
    name = await _next_name(db, guild_id)
    for step in (1, 2):
        print(f"\rtrain [{'#' * step}{'.' * (2 - step)}] {step}/2 loss 1.5", end="", flush=True)
    print()
    worse = os.environ.get("FAKE_TUNE_LOSS") == "worse"
    async with Store.open(db, mark_interrupted=False) as store:
        members = members_of(db, guild_id)
        record = ModelRecord(
            name, "replay-model", f"/adapters/{name}", "sft", owner_guild_id=guild_id,
            contributors=tuple([await store.pseudonym(m) for m in members]),
            metrics={"before": {"loss": 2.0}, "after": {"loss": 3.0 if worse else 1.0}},
            data={"counts": {"train": {"rows": rows}}, "max_steps": max_steps},
        )  # fmt: skip
        await store.register_model(record)
    await _hand_over(db, guild_id, name)
    return 0


def members_of(db: Path, guild_id: int) -> list[int]:
    """Who wrote or asked for the guild's texts: the fake's contributors."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        sql = "SELECT DISTINCT user_id FROM generations WHERE guild_id = ?"
        return [row[0] for row in conn.execute(sql, (guild_id,))]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--guild", type=int, required=True)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--max-steps", type=int)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.guild, args.dry_run, args.max_steps)))
