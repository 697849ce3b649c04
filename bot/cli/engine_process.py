"""The engine in a child process: `muse run` starts `muse serve` on a free loopback port and
talks to it through the remote backend (`OpenAIBackend`), as to any OpenAI-compatible server.

On an accelerator the engine's worker is bound by launching kernels from Python, and shares the
GIL with the bot's event loop when both live in one process; apart, neither slows the other.

    async with open_engine(settings, store) as engine:   # the child, or the in-process engine
        ...

The child gets a random key (by environment, never on its command line), stops when its standard
input closes (so it never outlives this process), and is restarted when it dies: requests in
flight then fail through the remote backend's errors, later ones reach the new child.

On a shared host another local user can bind a loopback port too: one who takes the child's port
while it restarts would receive every prompt and the key, and write the bot's replies. So each
child gets a fresh port and a fresh key, and nothing is sent to it (not even the key) until its
`/health` has answered a fresh random challenge with the HMAC of it under the key
(generation/serve/proof.py), which only the child can do. The remote backend asks `endpoint()`
where to send each request, and waits there while no proven child is serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence

import aiohttp

from bot.cli.wiring import build_backend, registered_adapters
from bot.core.settings import Settings
from bot.core.shutdown import close_engine
from generation.backend import Backend
from generation.errors import ModelLoadError
from generation.remote.backend import OpenAIBackend, RemoteConfig
from generation.serve import ServeConfig
from generation.serve.proof import CHALLENGE_HEADER, proves
from storage.store import Store

log = logging.getLogger("muse.bot.cli.engine_process")

READY_TIMEOUT_S = 300.0  # a first start may convert the GGUF (tens of seconds on a CPU)
STOP_EXTRA_S = 15.0  # SIGKILL this long after the child's own shutdown grace
TAIL_LINES = 40  # of the child's stderr, kept for error messages
RESTART_DELAYS_S = (0.5, 2.0, 5.0, 15.0, 30.0)  # after consecutive failures
STABLE_S = 60.0  # a child that lived this long resets the delays
# The child's per-request timeout is this much longer than the requests' own: the client's deadline
# ends a slow request first (as `timeout`, then closing the stream aborts it in the child).
TIMEOUT_MARGIN_S = 5
SERVE = (sys.executable, "-m", "bot.cli", "serve")
CONNECTIONS_SPARE = 16  # the child's connection cap: the client's own bound, plus health checks


class EngineProcessError(ModelLoadError):
    """The child did not become ready; the message holds its last stderr lines."""


def wants_engine_process(settings: Settings) -> bool:
    """`MUSE_ENGINE_PROCESS`: `1` on, `0` off, `auto` on when the engine would run on an
    accelerator (CUDA or Apple's MPS). Never with `MUSE_BACKEND=openai`: the engine is remote."""
    if settings.backend != "local" or settings.engine_process == "0":
        return False
    if settings.engine_process == "1":
        return True
    device = (settings.device or "auto").lower()
    if device != "auto":
        return device != "cpu"
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps is not None and mps.is_available())


def free_port() -> int:
    """A loopback port free now. Another process may take it before the child binds it: the
    child then fails to start, and anything else answering there cannot prove the key."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(
    settings: Settings, key: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The child's environment: this one, with the engine's settings as `settings` has them,
    the key, and no secret the child does not need."""
    env = dict(os.environ)
    env.update(
        MUSE_BACKEND="local",
        MUSE_ENGINE_PROCESS="0",
        MUSE_SERVE_API_KEY=key,
        MUSE_MODEL=settings.model,
        MUSE_DEVICE=settings.device,
        MUSE_WEIGHTS=settings.weights,
        MUSE_THREADS=str(settings.threads),
        MUSE_CACHE_DIR=str(settings.cache_dir),
        MUSE_QUEUE_SIZE=str(settings.queue_size),
        MUSE_MAX_BATCH=str(settings.max_batch),
        MUSE_MAX_TOKENS=str(settings.max_tokens),
        MUSE_TIMEOUT_S=str(max(1, round(settings.timeout_s)) + TIMEOUT_MARGIN_S),
        MUSE_SHUTDOWN_GRACE_S=str(max(0, round(settings.shutdown_grace_s))),
        MUSE_LOG_LEVEL=settings.log_level,
        PYTHONUNBUFFERED="1",
        # Set empty, so a `.env` the child reads cannot fill them in either.
        DISCORD_TOKEN="",
        MUSE_OPENAI_API_KEY="",
    )
    env.update(extra or {})
    return env


class EngineProcess:
    """`muse serve` as a supervised child on 127.0.0.1:`port`, with a key of its own; both
    change at every (re)start."""

    def __init__(
        self,
        settings: Settings,
        *,
        ready_timeout_s: float = READY_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = SERVE,
    ) -> None:
        self.settings = settings
        self.key = secrets.token_urlsafe(32)  # both new for each child: see _spawn
        self.port = free_port()
        self.ready_timeout_s = ready_timeout_s
        self.restarts = 0
        self._env = dict(env or {})  # added to the child's environment
        self._command = tuple(command)
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._healthy = asyncio.Event()

    def __repr__(self) -> str:  # never the key
        return f"EngineProcess(port={self.port}, pid={self.pid}, restarts={self.restarts})"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def remote_config(self) -> RemoteConfig:
        """What the client needs: the URL, the key, and the same limits as the child's."""
        return RemoteConfig(
            base_url=self.base_url,
            api_key=self.key,
            queue_size=self.settings.queue_size,
            max_new_tokens=self.settings.max_tokens,
            prefill=True,  # `muse serve` continues a final assistant message (vLLM's way)
            runtime_lora=True,  # the loop's new adapters: `muse serve` loads them at run time
        )

    async def start(self) -> EngineProcess:
        """Start the child and wait until `/health` says ready; `EngineProcessError` if not."""
        await self._spawn()
        try:
            await self._wait_healthy()
        except BaseException:
            await self._stop(0.0)
            raise
        self._watcher = asyncio.create_task(self._watch(), name="muse-engine-process")
        return self

    async def wait_healthy(self, timeout_s: float) -> None:
        """Wait until a child is serving (after a restart, the new one)."""
        await asyncio.wait_for(self._healthy.wait(), timeout_s)

    async def endpoint(self) -> tuple[str, str]:
        """(API base, key) of the child serving now, once it has proved that it holds the key;
        waits while there is none (a restart). The remote backend asks before every request."""
        while True:
            await self._healthy.wait()
            if self._process is not None and self._process.returncode is None:
                return self.base_url, self.key
            self._healthy.clear()  # it died and the watcher has not noticed yet

    def last_lines(self) -> str:
        return "".join(self._tail).replace(self.key, "***").rstrip()

    async def aclose(self) -> None:
        """Stop supervising; SIGTERM the child, SIGKILL it after its grace (+ a margin)."""
        self._healthy.clear()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self._stop(self.settings.shutdown_grace_s + STOP_EXTRA_S)

    # -- the child's life --------------------------------------------------------------------
    async def _spawn(self) -> None:
        # A new child, a new port and key: nothing reaches the old port, and a key seen by
        # whoever took it is worth nothing to the next child.
        self._healthy.clear()
        self.key = secrets.token_urlsafe(32)
        self.port = free_port()
        self._tail.clear()
        cap = max(ServeConfig().max_connections, self.settings.queue_size + CONNECTIONS_SPARE)
        self._process = await asyncio.create_subprocess_exec(
            *self._command,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-connections",
            str(cap),
            "--exit-with-parent",
            stdin=asyncio.subprocess.PIPE,  # its end closes when this process dies
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=child_env(self.settings, self.key, self._env),
            start_new_session=True,  # Ctrl-C reaches this process, which stops the child
        )
        log.info("started the engine process (pid %d) on %s", self._process.pid, self.base_url)
        self._reader = asyncio.create_task(self._read_stderr(self._process))

    async def _read_stderr(self, process: asyncio.subprocess.Process) -> None:
        """Keep the child's last lines, and pass them on to this process's stderr."""
        assert process.stderr is not None
        pending = b""
        while piece := await process.stderr.read(1 << 16):
            *lines, pending = (pending + piece).split(b"\n")
            for raw in lines:
                self._echo(raw.decode(errors="replace") + "\n")
            if len(pending) > 1 << 16:  # no line end in sight: show it in pieces
                self._echo(pending.decode(errors="replace") + "\n")
                pending = b""
        if pending:
            self._echo(pending.decode(errors="replace") + "\n")

    def _echo(self, line: str) -> None:
        self._tail.append(line)
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"[engine] {line}")

    async def _wait_healthy(self) -> None:
        """Poll `/health` with a fresh challenge each time until the child answers ready and
        proves that it holds the key; anything else answering there is not believed."""
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self.ready_timeout_s
        url = f"http://127.0.0.1:{self.port}/health"
        timeout = aiohttp.ClientTimeout(total=5)
        warned = False
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                if process.returncode is not None:
                    await self._drained()
                    raise self._failure(f"exited with status {process.returncode}")
                challenge = secrets.token_urlsafe(24)
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    async with http.get(url, headers={CHALLENGE_HEADER: challenge}) as response:
                        answer = await response.json(content_type=None)
                        if proves(answer, self.key, challenge):
                            if response.status == 200:
                                self._healthy.set()
                                return
                        elif not warned:
                            warned = True
                            log.warning(
                                "something that cannot prove it is the engine process answers "
                                "on 127.0.0.1:%d; sending it nothing",
                                self.port,
                            )
                if time.monotonic() > deadline:
                    await self._stop(0.0)
                    raise self._failure(f"was not ready within {self.ready_timeout_s:.0f} s")
                await asyncio.sleep(0.2)

    def _failure(self, what: str) -> EngineProcessError:
        lines = self.last_lines() or "(it printed nothing)"
        return EngineProcessError(
            f"The engine process (`muse serve`) {what}. Its last lines:\n{lines}"
        )

    async def _watch(self) -> None:
        """Restart the child whenever it ends, until `aclose`."""
        failures = 0
        while True:
            process = self._process
            assert process is not None
            started = time.monotonic()
            code = await process.wait()
            await self._drained()
            if process.stdin is not None:
                process.stdin.close()
            self._healthy.clear()
            if time.monotonic() - started > STABLE_S:
                failures = 0
            delay = RESTART_DELAYS_S[min(failures, len(RESTART_DELAYS_S) - 1)]
            log.error(
                "the engine process (pid %d) exited with status %s; restarting it in %.1f s. "
                "Its last lines:\n%s",
                process.pid,
                code,
                delay,
                self.last_lines() or "(none)",
            )
            await asyncio.sleep(delay)
            try:
                await self._spawn()
                await self._wait_healthy()
            except (EngineProcessError, OSError) as exc:
                failures += 1
                log.error("restarting the engine process failed: %s", exc)
                continue
            self.restarts += 1
            log.info("the engine process is serving again (pid %d)", self._process.pid)

    async def _drained(self) -> None:
        """The child's stderr read to its end (its last words are in the tail)."""
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5.0)

    async def _stop(self, grace_s: float) -> None:
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace_s)
            except TimeoutError:
                log.warning("the engine process did not stop in %.0f s: killing it", grace_s)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if process.stdin is not None:
            process.stdin.close()
        await self._drained()


@contextlib.asynccontextmanager
async def engine_process(settings: Settings, **kwargs) -> AsyncIterator[Backend]:
    """The child started and ready, and a remote backend talking to it; both closed at exit."""
    child = await EngineProcess(settings, **kwargs).start()
    backend = OpenAIBackend(child.remote_config(), endpoint=child.endpoint)
    try:
        await backend.wait_ready()
        yield backend
    finally:
        await backend.aclose()
        await child.aclose()


@contextlib.asynccontextmanager
async def open_engine(settings: Settings, store: Store) -> AsyncIterator[Backend]:
    """`muse run`'s engine: in a child process when `wants_engine_process`, else in this one
    (not waited for: it loads while the bot connects), serving the adapters `store` registers.
    Closed at exit either way."""
    if wants_engine_process(settings):
        async with engine_process(settings) as backend:
            yield backend
        return
    engine = build_backend(settings, adapters=await registered_adapters(store))
    try:
        yield engine
    finally:
        await close_engine(engine)
