"""`muse db copy SOURCE TARGET`: move a whole Muse database between SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import sys

from storage.copy import CopyError, copy_database
from storage.location import describe


def add_subcommand(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("db", help="copy a whole database between SQLite and PostgreSQL")
    actions = parser.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    copy = actions.add_parser(
        "copy",
        help="copy every row of SOURCE into TARGET (an SQLite file or a postgresql:// URL)",
        description=(
            "Copy a whole Muse database: SQLite file to PostgreSQL URL, or back. The source "
            "is read in one snapshot (Muse may keep running on it); the target is filled in "
            "one transaction and the rows per table are checked before it commits, so a "
            "failure leaves the target as it was. A target that holds rows is refused "
            "unless --force."
        ),
    )
    copy.add_argument("source", metavar="SOURCE", help="SQLite file or postgresql:// URL")
    copy.add_argument("target", metavar="TARGET", help="SQLite file or postgresql:// URL")
    copy.add_argument(
        "--force", action="store_true", help="replace the rows a non-empty TARGET holds"
    )
    copy.set_defaults(func=run_copy)


def run_copy(args: argparse.Namespace) -> int:
    try:
        counts = copy_database(args.source, args.target, force=args.force)
    except CopyError as exc:
        print(f"muse db copy: error: {exc}", file=sys.stderr)
        return 1
    rows = ", ".join(f"{table} {count:,}" for table, count in counts.items())
    print(
        f"copied {describe(args.source)} to {describe(args.target)}: {rows} (counts checked)",
        file=sys.stderr,
    )
    return 0
