"""`muse loop`: the learning loop from the host's shell.

    muse loop status [--guild ID] [--json]   # every guild's loop, or one
    muse loop tune --guild ID [--dry-run] [--method sft]   # one tune now (what the bot starts)

`muse loop tune` is `muse tune --guild ID --method sft` under the loop's rules: the next
version's name (`g<guild>-v<n>`, never reused: a server caches adapters by name), one tune at a
time per database (a lock file beside it), and the result handed to the loop (`tuned`, then
`checking`: the running bot serves it, checks it and sends it to the arena at its next look).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from bot.cli import tune
from bot.cli.data import _db_path
from bot.core.loop.status import loop_status
from bot.core.settings import Settings
from storage.pg_conn import try_advisory_lock
from storage.store import Store

EXIT_BUSY = 3  # another tune holds the lock
# SFT, not `muse tune`'s auto: the loop tunes on a few dozen rows, where auto picks DPO as soon as
# 8 edits make 8 pairs, and DPO at its defaults taught none of 16 held-out prompts a marker that
# 24 edits carried (SFT on the same edits: 16 of 16).
LOOP_METHOD = "sft"


def add_subcommand(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "loop",
        help="the learning loop: its state per guild, or one tune now",
        description="The learning loop: status per guild, or one tune now (for cron).",
    )
    actions = parser.add_subparsers(dest="loop_action", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="state, rows, challenger, votes, history")
    status.add_argument("--guild", type=int, metavar="ID", help="only this guild")
    status.add_argument("--json", action="store_true", help="machine-readable")
    status.add_argument(
        "--db", metavar="PATH", help="SQLite file or postgresql:// URL (default: $MUSE_DB)"
    )
    status.set_defaults(func=run_status)
    now = actions.add_parser("tune", help="tune the guild's next model now")
    now.add_argument("--guild", type=int, metavar="ID", required=True, help="the guild")
    now.add_argument("--dry-run", action="store_true", help="say what would train; train nothing")
    now.add_argument("--max-steps", type=int, metavar="N", help="stop after N steps")
    now.add_argument(
        "--method",
        choices=("sft", "auto", "dpo", "kto"),
        default=LOOP_METHOD,
        help=f"training method (default {LOOP_METHOD}: learns a community's edits from few rows)",
    )
    now.add_argument(
        "--db", metavar="PATH", help="SQLite file or postgresql:// URL (default: $MUSE_DB)"
    )
    now.set_defaults(func=run_tune)


def run_status(args: argparse.Namespace) -> int:
    settings: Settings = args.settings
    statuses = asyncio.run(_statuses(_db_path(args), settings, args.guild))
    if args.json:
        shown = [s.to_json() for s in statuses]
        print(json.dumps(shown[0] if args.guild is not None else shown, indent=2))
        return 0
    if not statuses:
        print("No guild has turned the learning loop on (`/loop set enabled:true`).")
    for status in statuses:
        print(f"guild {status.loop.guild_id}\n{status.render()}\n")
    return 0


async def _statuses(db: Path | str, settings: Settings, guild_id: int | None) -> list:
    async with Store.open(db, mark_interrupted=False) as store:
        ids = [guild_id] if guild_id is not None else [
            loop.guild_id for loop in await store.enabled_loops()
        ]  # fmt: skip
        return [await loop_status(store, settings, gid) for gid in ids]


def run_tune(args: argparse.Namespace) -> int:
    """0 tuned (or the dry run found enough), 2 not enough data, 3 another tune runs, else
    what `muse tune` returned."""
    db = _db_path(args)
    with _one_tune(db) as held:
        if not held:
            print("muse loop tune: another tune is running on this database.", file=sys.stderr)
            return EXIT_BUSY
        name = asyncio.run(_next_name(db, args.guild))
        argv = ["tune", "--name", name, "--guild", str(args.guild), "--db", str(db)]
        argv += ["--method", args.method]
        if args.dry_run:
            argv.append("--dry-run")
        if args.max_steps:
            argv += ["--max-steps", str(args.max_steps)]
        parser = argparse.ArgumentParser(prog="muse")
        tune.add_subcommand(parser.add_subparsers(dest="command"))
        tune_args = parser.parse_args(argv)
        tune_args.settings = args.settings
        code = tune.run_tune(tune_args)
        if code == 0 and not args.dry_run:
            asyncio.run(_hand_over(db, args.guild, name))
        return code


async def _next_name(db: Path | str, guild_id: int) -> str:
    """`g<guild>-v<n>`, n one more than any version registered before (retired included)."""
    prefix = f"g{guild_id}-v"
    async with Store.open(db, mark_interrupted=False) as store:
        taken = [m.name for m in await store.list_models(include_retired=True)]
    versions = [int(n[len(prefix) :]) for n in taken if n.startswith(prefix) and
                n[len(prefix) :].isdigit()]  # fmt: skip
    return f"{prefix}{max(versions, default=0) + 1}"


async def _hand_over(db: Path | str, guild_id: int, name: str) -> None:
    """The loop takes it from here: `tuned` in the history, the adapter to be checked."""
    async with Store.open(db, mark_interrupted=False) as store:
        record = await store.get_model(name)
        counts = record.data.get("counts", {}) if record else {}
        await store.add_loop_event(guild_id, "tuned", name, "trained on this server's data",
                                   {"counts": counts})  # fmt: skip
        await store.update_loop(guild_id, state="checking", challenger=name, progress={})


#: The tune lock's advisory lock key on PostgreSQL (any fixed number: "tune" in ASCII).
TUNE_LOCK = 0x74756E65


@contextlib.contextmanager
def _one_tune(db: Path | str) -> Iterator[bool]:
    """Hold the database's tune lock (a file beside it; never the database itself, whose
    locks SQLite owns; on PostgreSQL an advisory lock, which holds across machines); yields
    False when another process holds it."""
    if isinstance(db, str):
        with try_advisory_lock(db, TUNE_LOCK) as held:
            yield held
        return
    path = db.with_name(f"{db.name}.tune.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
