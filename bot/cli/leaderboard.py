"""`muse leaderboard`: the models ranked by arena votes (Bradley–Terry, 95 % bootstrap
intervals), as a table, as JSON (`--json`: a list, best first, of model, score, lower, upper,
votes, win_rate), and as a chart (`--chart PATH.png`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from bot.cli.data import _db_path
from storage.arena import leaderboard_votes
from storage.leaderboard import Leaderboard, build_leaderboard, format_table, leaderboard_chart_png
from storage.store import Store


def add_subcommand(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "leaderboard",
        help="models ranked by arena votes, with 95 %% intervals",
        description="Rank the models by /arena votes: a Bradley–Terry fit, ties half a win.",
    )
    parser.add_argument("--guild", type=int, metavar="ID", help="only this guild's votes")
    parser.add_argument("--task", metavar="T", help="only this task's votes")
    parser.add_argument("--chart", metavar="PATH.png", help="also write a PNG chart here")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    parser.add_argument(
        "--db", metavar="PATH", help="SQLite file or postgresql:// URL (default: $MUSE_DB)"
    )
    parser.set_defaults(func=run_leaderboard)


def run_leaderboard(args: argparse.Namespace) -> int:
    """0 done; 2 bad input."""
    if args.chart and not Path(args.chart).parent.is_dir():
        print(f"muse leaderboard: no such directory for --chart: {args.chart}", file=sys.stderr)
        return 2
    board = asyncio.run(_board(_db_path(args), args.guild, args.task))
    print(json.dumps(board.as_json(), indent=2) if args.json else format_table(board))
    if args.chart:
        Path(args.chart).write_bytes(leaderboard_chart_png(board))
        print(f"chart written to {args.chart}", file=sys.stderr)
    return 0


async def _board(db: Path | str, guild_id: int | None, task: str | None) -> Leaderboard:
    async with Store.open(db, mark_interrupted=False) as store:
        votes = await store.arena_votes(guild_id=guild_id, task=task)
    return build_leaderboard(leaderboard_votes(votes))
