"""The `muse` command: run the bot, generate in a terminal, export and inspect the data.

The only place that wires settings, the store, the engine and a front end together."""

from __future__ import annotations

import argparse
import sys

from bot.cli import (
    backup,
    console,
    data,
    db,
    doctor,
    generate,
    leaderboard,
    loop,
    model_registry,
    run,
    serve,
    tune,
)
from bot.core.settings import Settings, SettingsError
from storage.errors import DatabaseReadOnly


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="muse", description="Muse: a self-hosted generative-AI bot for Discord communities."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate.add_subcommand(commands)
    run.add_subcommand(commands)
    console.add_subcommand(commands)
    data.add_subcommands(commands)
    backup.add_subcommand(commands)
    db.add_subcommand(commands)
    doctor.add_subcommand(commands)
    serve.add_subcommand(commands)
    tune.add_subcommand(commands)
    model_registry.add_subcommand(commands)
    leaderboard.add_subcommand(commands)
    loop.add_subcommand(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_fields", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        args.settings = Settings.load()
    except SettingsError as exc:
        if not getattr(args, "reports_settings_errors", False):  # `muse doctor` reports it
            print(f"muse: {exc}", file=sys.stderr)
            return 2
        args.settings, args.settings_error = None, exc
    try:
        return int(args.func(args) or 0)
    except DatabaseReadOnly as exc:  # one clear line, not a traceback
        print(f"muse: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
