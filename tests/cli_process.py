"""`muse ARGV` in a process of its own: how tests run a command beside a live store (a process
opens its database once, so a second `Store.open` in the test's own process is refused)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_muse(
    *argv: str, env: Mapping[str, str] | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `muse ARGV` to its end (blocking: from async code, through `asyncio.to_thread`)."""
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *argv],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
