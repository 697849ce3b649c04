"""`muse export` and `muse stats`: the data subcommands, wired into `bot/cli/main.py` by
`add_subcommands`. Each handler runs its own event loop and returns an exit code."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import TextIO

from storage.errors import StorageError
from storage.export import FORMATS, ExportFilters
from storage.location import database_target
from storage.stats import TaskModelStats, format_table, ratings_chart_png
from storage.store import Store

USAGE_ERROR = 2


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Add `export` and `stats` to the `muse` parser's subcommands."""
    export = subparsers.add_parser(
        "export",
        help="write rated generations as JSONL for TRL (sft, dpo, kto) or everything (raw)",
        description="Export rated generations as JSONL in TRL's conversational formats.",
    )
    export.add_argument("--format", required=True, choices=FORMATS, help="the dataset format")
    export.add_argument("--out", required=True, metavar="PATH|-", help="output file, - for stdout")
    export.add_argument(
        "--min-score",
        type=int,
        metavar="N",
        help="signal strength: sft/raw score >= N, kto |score| >= N, dpo margin >= N",
    )
    export.add_argument(
        "--since",
        type=_parse_date,
        metavar="YYYY-MM-DD",
        help="only generations created on or after this day (UTC)",
    )
    export.add_argument("--guild", type=int, metavar="ID", help="only this guild (server) id")
    export.add_argument("--task", metavar="T", help="only this task (story, poem, ...)")
    _add_db_option(export)
    export.set_defaults(func=run_export)

    stats = subparsers.add_parser(
        "stats",
        help="ratings per task and model",
        description="Print rating statistics; optionally save a chart of ratings per task.",
    )
    stats.add_argument("--chart", metavar="PATH.png", help="also write a PNG chart here")
    _add_db_option(stats)
    stats.set_defaults(func=run_stats)


def _add_db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="PATH",
        help="SQLite file or postgresql:// URL (default: $MUSE_DB, else ./muse.db)",
    )


def _parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid date {text!r}: use YYYY-MM-DD") from None


def _db_path(args: argparse.Namespace) -> Path | str:
    """--db, else the loaded settings' database (`muse` puts them on args), else $MUSE_DB:
    an SQLite file's path, or a postgresql:// URL."""
    if getattr(args, "db", None):
        return database_target(args.db)
    settings_path = getattr(getattr(args, "settings", None), "db_path", None)
    return database_target(settings_path or os.environ.get("MUSE_DB") or "muse.db")


def _usage_error(command: str, message: str) -> int:
    print(f"muse {command}: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def run_export(args: argparse.Namespace) -> int:
    """Handler of `muse export`; exit code 0, 1 (store refused) or 2 (bad input)."""
    if args.format not in FORMATS:
        return _usage_error("export", f"unknown format {args.format!r}; choose {FORMATS}")
    since = args.since
    if isinstance(since, str):
        try:
            since = _parse_date(since)
        except argparse.ArgumentTypeError as exc:
            return _usage_error("export", str(exc))
    if args.out != "-" and not Path(args.out).parent.is_dir():
        return _usage_error("export", f"no such directory for --out: {Path(args.out).parent}")
    filters = ExportFilters(
        min_score=args.min_score, since=since, guild_id=args.guild, task=args.task
    )
    try:
        count = asyncio.run(_export(_db_path(args), args.format, args.out, filters))
    except StorageError as exc:
        print(f"muse export: error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {count} {args.format} rows to {args.out}", file=sys.stderr)
    return 0


async def _export(db: Path | str, fmt: str, out: str, filters: ExportFilters) -> int:
    async with Store.open(db, mark_interrupted=False) as store:
        with _output(out) as stream:
            return await store.export(fmt, stream, filters, progress=True)


@contextlib.contextmanager
def _output(out: str) -> Iterator[TextIO]:
    """stdout for "-"; otherwise a temporary file renamed into place only when complete."""
    if out == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(out)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as stream:
            yield stream
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def run_stats(args: argparse.Namespace) -> int:
    """Handler of `muse stats`; exit code 0, 1 (store refused) or 2 (bad input)."""
    chart = getattr(args, "chart", None)
    if chart and not Path(chart).parent.is_dir():
        return _usage_error("stats", f"no such directory for --chart: {Path(chart).parent}")
    try:
        stats = asyncio.run(_stats(_db_path(args)))
    except StorageError as exc:
        print(f"muse stats: error: {exc}", file=sys.stderr)
        return 1
    print(format_table(stats))
    if chart:
        Path(chart).write_bytes(ratings_chart_png(stats))
        print(f"chart written to {chart}", file=sys.stderr)
    return 0


async def _stats(db: Path | str) -> list[TaskModelStats]:
    async with Store.open(db, mark_interrupted=False) as store:
        return await store.stats()
