"""`muse console` (and `muse run` without a token): owns the store and the engine, and runs
the console session (`bot.console.session`) until /quit, end of input, Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Any, TextIO

from bot.cli.wiring import build_backend, presets_from, registered_adapters, setup_logging
from bot.console.session import Console
from bot.console.terminal import Terminal
from bot.core.app import Muse
from bot.core.settings import Settings
from generation.errors import ModelLoadError, OptionError
from storage.store import Store

log = logging.getLogger("muse.bot.cli.console")

EXIT_MODEL_FAILED = 1
SHUTDOWN_GRACE_S = 10.0
ENGINE_THREAD = "muse-engine"


def add_subcommand(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "console",
        help="the bot's commands in a terminal (rate with keys afterwards)",
        description=(
            'The bot\'s commands in a terminal, e.g. /story prompt="a dragon" or '
            '/dialogue scene="a tavern" characters="Innkeeper, Stranger" lines=4. '
            "Rows are stored in MUSE_DB as user 0 in guild 0."
        ),
    )
    parser.set_defaults(func=lambda args: run_console(args.settings))


def run_console(settings: Settings, *, serving: bool = False) -> int:
    """Serve console mode until /quit, end of input or Ctrl-C; the exit code.

    `serving` (from `muse run`): this process is the server, so rows a crash left `running`
    are marked interrupted. A plain `muse console` may share the file with a live bot and
    leaves them alone.
    """
    setup_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="replace")  # type: ignore[union-attr]
    code = asyncio.run(main(settings, sys.stdin, sys.stdout, mark_interrupted=serving))
    if any(t.name == ENGINE_THREAD and t.is_alive() for t in threading.enumerate()):
        # Still inside torch (a model load, or a step longer than the grace): the store is
        # closed, but interpreter shutdown would abort the process under that thread.
        log.warning("the engine is still busy; exiting without waiting for it")
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    return code


async def main(
    settings: Settings, stdin: TextIO, stdout: TextIO, *, mark_interrupted: bool = False
) -> int:
    """Own the store and the engine; close both however the session ends."""
    io = Terminal(stdin, stdout)
    try:
        presets = presets_from(settings)
    except OptionError as exc:
        io.say(f"muse console: {exc}")
        return 2
    async with Store.open(settings.db_path, mark_interrupted=mark_interrupted) as store:
        engine = build_backend(settings, adapters=await registered_adapters(store))
        ready = asyncio.ensure_future(engine.wait_ready())
        app = Muse(settings=settings, store=store, engine=engine, presets=presets)
        console = Console(app, io, ready=ready)
        loop = asyncio.get_running_loop()
        handled = on_signals(loop, asyncio.current_task())
        try:
            return await console.serve()
        except asyncio.CancelledError:
            io.say("\nbye.")
            return 0
        except ModelLoadError as exc:
            io.say(f"muse console: {exc}")
            return EXIT_MODEL_FAILED
        finally:
            if ready.done() and not ready.cancelled():
                ready.exception()  # retrieved: a load error was reported or did not matter
            ready.cancel()
            await engine.aclose(SHUTDOWN_GRACE_S)  # lets an aborted step end; nothing else runs
            for sig in handled:
                loop.remove_signal_handler(sig)


def on_signals(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any] | None) -> list[int]:
    """Ctrl-C / SIGTERM cancel `task` (once: a second Ctrl-C does not break the clean-up)."""
    fired: list[bool] = []

    def stop() -> None:
        if not fired and task is not None:
            fired.append(True)
            task.cancel()

    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)
            handled.append(sig)
    return handled
