"""The `muse` command: run the bot, generate in a terminal, export and inspect the data."""

from __future__ import annotations

import argparse
import sys

from bot.settings import Settings, SettingsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="muse", description="Muse: a self-hosted generative-AI bot for Discord communities."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from bot import cli_generate

    cli_generate.add_subcommand(commands)
    from bot import cli_run

    cli_run.add_subcommand(commands)
    from bot import console

    console.add_subcommand(commands)
    try:
        from bot import cli_data
    except ImportError:  # pragma: no cover - the storage CLI is optional while it is built
        cli_data = None
    if cli_data is not None:
        cli_data.add_subcommands(commands)
    from bot import cli_backup, cli_doctor

    cli_backup.add_subcommand(commands)
    cli_doctor.add_subcommand(commands)
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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
