"""`muse serve [--host 127.0.0.1] [--port 8000] [--max-connections 256]`: the local engine
behind an OpenAI-compatible API (generation/serve/) until SIGTERM / SIGINT.

The port opens at once; `/health` answers 503 while the model loads and 200 once it is ready.
A model that fails to load ends the process (exit 1). On a signal new requests are refused,
running ones get `MUSE_SHUTDOWN_GRACE_S` to finish, then the engine and the server close.
`--exit-with-parent` (used by `muse run`'s engine process, bot/cli/engine_process.py) also
stops when standard input closes, so a child never outlives a parent killed with SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading

from bot.cli.wiring import build_backend, registered_adapters, setup_logging
from bot.core.settings import Settings
from generation.backend import Backend
from generation.serve import ServeConfig, ServeConfigError, Server, check_bind
from storage.store import Store

log = logging.getLogger("muse.bot.cli.serve")

EXIT_MODEL_FAILED = 1
EXIT_USAGE = 2
LOAD_WAIT_S = 120.0  # a model still loading at a signal: the loading thread cannot be interrupted
ENGINE_THREAD = "muse-engine"
DEFAULTS = ServeConfig()


def add_subcommand(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="the engine behind an OpenAI-compatible API",
        description=(
            "Serve the local engine as an OpenAI-compatible API: POST /v1/chat/completions "
            "(streamed or not), GET /v1/models, GET /health. Binding beyond 127.0.0.1 needs "
            "MUSE_SERVE_API_KEY, which clients send as `Authorization: Bearer <key>`."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULTS.max_connections,
        help="connections open at once; more are answered 503 and closed (default %(default)s)",
    )
    parser.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(func=run_serve)


def serve_config(
    settings: Settings, host: str, port: int, max_connections: int = DEFAULTS.max_connections
) -> ServeConfig:
    return ServeConfig(
        host=host,
        port=port,
        max_connections=max_connections,
        api_key=settings.serve_api_key.reveal(),
        timeout_s=settings.timeout_s,
        max_new_tokens=settings.max_tokens,
    )


def run_serve(args: argparse.Namespace) -> int:
    settings: Settings = args.settings
    if settings.backend != "local":
        print(
            "muse serve: MUSE_BACKEND=openai already sends requests to another server; "
            "`muse serve` runs the local engine. Unset MUSE_BACKEND (or set it to local).",
            file=sys.stderr,
        )
        return EXIT_USAGE
    config = serve_config(settings, args.host, args.port, args.max_connections)
    try:
        check_bind(config)
    except ServeConfigError as exc:
        print(f"muse serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(settings.log_level)
    code = asyncio.run(main(settings, config, exit_with_parent=args.exit_with_parent))
    if any(t.name == ENGINE_THREAD and t.is_alive() for t in threading.enumerate()):
        # Still inside torch: interpreter shutdown would abort the process under that thread.
        log.warning("the engine is still busy; exiting without waiting for it")
        logging.shutdown()
        os._exit(code)
    return code


async def main(settings: Settings, config: ServeConfig, *, exit_with_parent: bool = False) -> int:
    """Serve until a signal (or, with `exit_with_parent`, the end of standard input)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    if exit_with_parent:
        _watch_stdin(loop, stopping)
    async with Store.open(settings.db_path, mark_interrupted=False) as store:
        adapters = await registered_adapters(store)  # closed again: the bot's process owns it
    engine = build_backend(settings, adapters=adapters)
    server = Server(engine, config)
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
        await _close_engine(engine, 0.0)
        return EXIT_MODEL_FAILED
    log.info("serving the OpenAI API at %s (the model is loading)", server.base_url)
    loaded = asyncio.ensure_future(server.wait_loaded())
    stopper = asyncio.ensure_future(stopping.wait())
    code = 0
    try:
        await asyncio.wait({loaded, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if loaded.done() and loaded.exception() is not None:
            log.error("stopping: the model failed to load: %s", loaded.exception())
            code = EXIT_MODEL_FAILED
        else:
            await stopper
            grace = settings.shutdown_grace_s
            log.info("stopping: letting running requests finish (up to %.0f s)", grace)
    finally:
        stopper.cancel()
        loaded.cancel()
        server.stop_accepting()
        await _close_engine(engine, settings.shutdown_grace_s)
        await server.close()
    return code


async def _close_engine(engine: Backend, grace_s: float) -> None:
    """Let a loading model finish loading first (see bot.core.shutdown.close_engine), then let
    running requests finish for up to `grace_s`."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(engine.wait_ready(), LOAD_WAIT_S)
    await engine.aclose(grace_s)


def _watch_stdin(loop: asyncio.AbstractEventLoop, stopping: asyncio.Event) -> None:
    """Stop when standard input closes: the parent that holds its other end has gone."""

    def read() -> None:
        # The raw descriptor: a thread left inside a buffered read aborts interpreter shutdown.
        with contextlib.suppress(OSError, ValueError):
            while os.read(sys.stdin.fileno(), 4096):
                pass
        log.info("standard input closed: the parent process is gone")
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(stopping.set)

    threading.Thread(target=read, name="muse-parent-watch", daemon=True).start()
