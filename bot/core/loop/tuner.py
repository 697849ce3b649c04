"""A tune in a child process, so the bot keeps answering while it trains: low priority, fewer
threads than the engine, killed with the bot (Linux: PR_SET_PDEATHSIG; elsewhere the next start
finds the loop `training` and runs the tune again), its progress read from its output."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("muse.bot.core.loop.tuner")

NICENESS = 10
TAIL_LINES = 20
#: `muse tune`'s progress line: "train [####......] 3/10 loss 1.234"
PROGRESS = re.compile(r"train \[[#.]*\] (?P<step>\d+)/(?P<total>\d+)(?: loss (?P<loss>[\d.]+))?")
PR_SET_PDEATHSIG = 1

Progress = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class TuneOutcome:
    """How the child ended: its exit code and its last lines (the reason, when it failed)."""

    code: int
    tail: tuple[str, ...]

    @property
    def reason(self) -> str:
        lines = [line for line in self.tail if line.strip()]
        return lines[-1].removeprefix("muse tune: ") if lines else f"exit code {self.code}"


def _lower_priority() -> None:
    """In the child, before exec: a nicer priority, and death when the parent dies."""
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


async def run_tune(
    command: Sequence[str], env: Mapping[str, str], progress: Progress
) -> TuneOutcome:
    """Run `command` to its end, reporting each progress line; cancelling kills the child."""
    child = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env),
        preexec_fn=_lower_priority,  # noqa: PLW1509 - no threads start in between
    )
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        assert child.stdout is not None
        async for raw in _lines(child.stdout):
            line = raw.strip()
            if not line:
                continue
            tail.append(line)
            found = PROGRESS.search(line)
            if found:
                step, total = int(found["step"]), int(found["total"])
                loss = float(found["loss"]) if found["loss"] else None
                await progress({"phase": "train", "step": step, "total": total, "loss": loss})
            elif ":" in line and len(line) < 200:
                await progress({"phase": line.split(":", 1)[0], "message": line})
        code = await child.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
        raise
    log.info("the tune ended with exit code %d", code)
    return TuneOutcome(code, tuple(tail))


async def _lines(stream: asyncio.StreamReader) -> Any:
    """Lines of the child's output, `\\r` (a rewritten progress line) ending one too."""
    pending = b""
    while chunk := await stream.read(4096):
        pending += chunk
        *whole, pending = re.split(rb"[\r\n]", pending)
        for line in whole:
            yield line.decode(errors="replace")
    if pending:
        yield pending.decode(errors="replace")
