"""`muse run` as a subprocess against the Discord emulator, for crash and signal tests.

    async with muse_run(emu, tmp_path / "muse.db", MUSE_SHUTDOWN_GRACE_S="2") as bot:
        reply = await emu.slash_command("story", {"prompt": "a fox"})
        bot.kill()                       # SIGKILL; or bot.terminate() for SIGTERM
        assert await bot.wait_exit() == -9

The process has the emulator's settings (`emu.env()`), its own database, the CPU, and its
output in a log file (`bot.output()`, shown when a test fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from tests.discord_emulator import DiscordEmulator

ROOT = Path(__file__).resolve().parents[2]


class BotProcess:
    """A running `muse run`."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def output(self) -> str:
        """Everything the process logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as a crash or the OOM killer."""
        self.process.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM, as systemd or `docker stop`."""
        self.process.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout_s: float = 30.0) -> int:
        """The exit status (negative: killed by that signal)."""
        return await asyncio.wait_for(self.process.wait(), timeout_s)


@contextlib.asynccontextmanager
async def muse_run(
    emu: DiscordEmulator,
    db: Path | str,
    ready_timeout_s: float = 120.0,
    *,
    home: Path | None = None,
    **env: str,
) -> AsyncIterator[BotProcess]:
    """Start `muse run`, wait until it identified on the gateway, yield it; kill it on exit
    if it is still running. `env` adds or overrides settings (e.g. `MUSE_MAX_TOKENS="64"`).

    `db` is an SQLite file or a `postgresql://` URL. `home`, when given, is the process's own
    working and temporary folder (and holds its log), as on a machine of its own; by default
    it runs in the repository with its log beside the database file."""
    identified = emu.gateway.count("identify")
    if home is None:
        assert isinstance(db, Path), "a database URL needs a home for the log"
        log_path = db.with_name(f"{db.stem}-bot-{identified}.log")
    else:
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        log_path = home / f"bot-{identified}.log"
    environ = {
        **os.environ,
        **emu.env(),
        "MUSE_DB": str(db),
        "MUSE_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "MUSE_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",  # on a busy 2-core machine two threads run ~6x slower
        **({} if home is None else {"TMPDIR": str(home / "tmp")}),
        **env,
    }
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.cli",
            "run",
            cwd=home or ROOT,
            env=environ,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    bot = BotProcess(process, log_path)
    try:
        await emu.wait_for(
            lambda: emu.gateway.count("identify") > identified or process.returncode is not None,
            ready_timeout_s,
        )
        if process.returncode is not None:
            raise RuntimeError(f"muse run exited with {process.returncode}:\n{bot.output()}")
        await asyncio.sleep(0.3)  # READY and GUILD_CREATE reach discord.py's cache
        yield bot
    except BaseException:
        sys.stderr.write(f"--- muse run output ---\n{bot.output()[-6000:]}\n")
        raise
    finally:
        if process.returncode is None:
            bot.kill()
            await process.wait()
