"""Noticing a model step that never returns (a wedged GPU, a deadlocked kernel)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class StepWatchdog:
    """Calls `on_hang(reason)` once when a step runs longer than `limit_s`; watches while
    `watching()` holds. The worker brackets every model step with `started` / `finished`."""

    def __init__(
        self, limit_s: float, on_hang: Callable[[str], None], watching: Callable[[], bool]
    ) -> None:
        self.limit_s = limit_s
        self._on_hang = on_hang
        self._watching = watching
        self._started: float | None = None
        self._thread = threading.Thread(target=self._watch, name="muse-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def started(self) -> None:
        self._started = time.monotonic()

    def finished(self) -> None:
        self._started = None

    def _watch(self) -> None:
        while self._watching():
            time.sleep(min(0.5, self.limit_s / 4))
            started = self._started
            if started is not None and time.monotonic() - started > self.limit_s:
                self._on_hang(f"a model step hung for more than {self.limit_s:.0f} s")
                return
