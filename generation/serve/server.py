"""`Server`: the application on a TCP port, and the rule about which addresses need a key."""

from __future__ import annotations

import ipaddress

from aiohttp import web

from generation.backend import Backend
from generation.errors import ModelLoadError
from generation.serve.app import STATE, ServeConfig, create_app
from generation.serve.connections import CappedSite

MIN_KEY_CHARS = 16  # MUSE_SERVE_API_KEY: a shorter key is too easy to guess


class ServeConfigError(ValueError):
    """The server cannot start as configured; the message says what to change."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`; anything else can be reached from outside."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_bind(config: ServeConfig) -> None:
    """Refuse a key too short to resist guessing, and serving beyond this machine without one."""
    if config.api_key and len(config.api_key) < MIN_KEY_CHARS:
        raise ServeConfigError(
            f"MUSE_SERVE_API_KEY is {len(config.api_key)} characters long; it must be at least "
            f"{MIN_KEY_CHARS}, so that it cannot be guessed. Make one with: python -c "
            '"import secrets; print(secrets.token_urlsafe(32))"'
        )
    if config.max_connections < 1:
        raise ServeConfigError(
            f"--max-connections must be at least 1, not {config.max_connections}."
        )
    if not config.api_key and not is_loopback(config.host):
        raise ServeConfigError(
            f"Refusing to listen on {config.host} without an API key: anyone who can reach it "
            "could use the model. Set MUSE_SERVE_API_KEY (clients send it as "
            "`Authorization: Bearer <key>`), or listen on 127.0.0.1."
        )


class Server:
    """`await Server(backend, config).start()`, then `base_url`; `close()` stops listening."""

    def __init__(self, backend: Backend, config: ServeConfig | None = None) -> None:
        self.config = config or ServeConfig()
        self.backend = backend
        self.app = create_app(backend, self.config)
        self.port = self.config.port
        self._runner: web.AppRunner | None = None
        self._site: CappedSite | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI API base, e.g. http://127.0.0.1:8000/v1."""
        host = self.config.host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"http://{host}:{self.port}/v1"

    async def start(self) -> Server:
        """Listen (raises `ServeConfigError`, or `OSError` when the port is taken)."""
        check_bind(self.config)
        config = self.config
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,  # the app logs one line per request itself, without headers
            handler_cancellation=True,  # a closed connection cancels its handler: abort
            shutdown_timeout=config.shutdown_timeout_s,
            # aiohttp's keep-alive timer also runs from a connection's first byte and closes it
            # if its request head is still incomplete then: the header timeout. Its default
            # (an hour) let half-sent heads hold sockets until descriptors ran out.
            keepalive_timeout=config.head_timeout_s,
        )
        await runner.setup()
        try:
            site = CappedSite(runner, config.host, config.port, config.max_connections)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._site = runner, site
        self.port = site.port
        return self

    @property
    def open_connections(self) -> int:
        """Client connections open now (at most `config.max_connections`)."""
        return self._site.open_connections if self._site is not None else 0

    def stop_accepting(self) -> None:
        """New requests are answered 503 (shutting down); running ones go on."""
        self.app[STATE].stopping = True

    async def wait_loaded(self) -> None:
        """Wait until the backend's model is ready; raise `ModelLoadError` if it failed."""
        state = self.app[STATE]
        if state.watcher is not None:
            await state.watcher
        if state.load_error is not None:
            raise ModelLoadError(state.load_error)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = self._site = None
