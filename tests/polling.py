"""Waiting for a condition that nothing announces: poll it until true or the time is up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(
    check: Callable[[], object], timeout_s: float = 30.0, every_s: float = 0.02
) -> bool:
    """True as soon as `check()` is truthy; False once `timeout_s` passed without it."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every_s)
    return True
