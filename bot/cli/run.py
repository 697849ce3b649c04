"""`muse run`: connect to Discord and serve Muse until SIGTERM / SIGINT (console mode
without a token)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

import discord
import yarl

from bot.cli.console import run_console
from bot.cli.engine_process import EngineProcessError, open_engine
from bot.cli.wiring import presets_from, setup_logging
from bot.core.settings import Settings, SettingsError
from bot.core.shutdown import close_engine, drain
from bot.discord.client import create_bot
from bot.discord.sharding import plan_shards
from generation.backend import Backend
from generation.errors import OptionError
from generation.tasks.presets import Preset
from storage.store import Store

log = logging.getLogger("muse.bot.cli.run")

LOOP_TUNE = (sys.executable, "-m", "bot.cli", "loop", "tune")  # one tune, in a child process

NO_TOKEN = """\
muse run: DISCORD_TOKEN is not set.

To get a bot token:
  1. Open the Discord Developer Portal: https://discord.com/developers/applications
  2. New Application → Bot → Reset Token, and copy the token.
  3. Put it in the environment or in .env:  DISCORD_TOKEN=...
  4. Invite the bot with the scopes `bot` and `applications.commands`
     (OAuth2 → URL Generator), then run `muse run` again.

Starting console mode instead: the same commands in a terminal
(/help lists them, /quit or Ctrl-D leaves).
"""


def add_subcommand(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("run", help="run the Discord bot")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings: Settings = args.settings
    try:
        plan_shards(settings)  # refuse shard settings that do not fit, before anything starts
    except SettingsError as exc:
        print(f"muse run: {exc}", file=sys.stderr, flush=True)
        return 2
    if not settings.discord_token:
        print(NO_TOKEN, file=sys.stderr, flush=True)
        return run_console(settings, serving=True)
    setup_logging(settings.log_level)
    return asyncio.run(main(settings))


def redirect_discord(settings: Settings) -> None:
    """`DISCORD_API_BASE` / `DISCORD_GATEWAY_URL`: talk to a proxy (or the test emulator)."""
    if settings.discord_api_base:
        discord.http.Route.BASE = settings.discord_api_base.rstrip("/")
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


async def main(settings: Settings) -> int:
    """Own the store, the engine (in this process, or `muse serve` as a child with
    `MUSE_ENGINE_PROCESS`) and the bot; close them all on a signal."""
    redirect_discord(settings)
    try:
        presets = presets_from(settings)
    except OptionError as exc:  # a bad MUSE_PRESETS file: say which and why, not a traceback
        log.error("%s", exc)
        return 2
    try:
        async with Store.open(settings.db_path) as store, open_engine(settings, store) as engine:
            return await serve(settings, store, engine, presets)
    except EngineProcessError as exc:
        log.error("%s", exc)
        return 1


async def serve(
    settings: Settings, store: Store, engine: Backend, presets: dict[str, Preset]
) -> int:
    """Run the bot until a signal or a fatal error; 0 after a clean stop."""
    bot = create_bot(
        settings=settings, store=store, engine=engine, presets=presets, loop_command=LOOP_TUNE
    )
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    runner = asyncio.create_task(bot.start(settings.discord_token.reveal()))
    stopper = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if runner.done() and runner.exception() is not None:
            log.error("the bot stopped: %s", runner.exception())
            return 1
        log.info("shutting down")
    finally:
        stopper.cancel()
        if not runner.done():
            await drain(bot.app, settings.shutdown_grace_s)
        await close_engine(engine)
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await runner
    return 0
