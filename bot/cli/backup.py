"""`muse backup PATH`: an online, consistent copy of the database, safe while the bot runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from storage.location import database_target, describe
from storage.maintenance import BackupError, backup_file


def add_subcommand(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "backup",
        help="copy the database consistently, even while the bot runs",
        description=(
            "Copy the database to an SQLite file: a consistent snapshot, taken while Muse keeps "
            "writing (SQLite's online backup API; a PostgreSQL database is copied in one "
            "snapshot, restored with `muse db copy`). The copy is created with mode 0600."
        ),
    )
    parser.add_argument("path", metavar="PATH", help="where to write the copy")
    parser.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    parser.add_argument(
        "--db", metavar="PATH", help="the database to copy (default: $MUSE_DB, else ./muse.db)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    source = database_target(args.db) if args.db else args.settings.db_path
    target = Path(args.path)
    try:
        size = backup_file(source, target, overwrite=args.force)
    except BackupError as exc:
        print(f"muse backup: error: {exc}", file=sys.stderr)
        return 1
    print(f"backed up {describe(source)} to {target} ({size:,} bytes)", file=sys.stderr)
    return 0
