"""TEST ONLY: `MUSE_TEST_FAULT` makes the local engine fail on purpose, so that the fault
tests (`tests/bot/cli/test_faults.py`) can drive a `muse run` subprocess into a hung or failing
model. Never set it in production; Muse logs a warning when it is set.

    MUSE_TEST_FAULT=<kind>:<phase>[:<after>]

`kind`: `hang` (the step never returns: the engine's watchdog fires and the process exits 70),
`raise` (the step raises RuntimeError), `oom` (the step raises torch.OutOfMemoryError),
`slow` (the step takes `SLOW_STEP_S` longer: a test's long reply cannot finish early however
fast the machine, whether it would have reached its cap or its end of text);
`phase`: `prefill` or `decode`; `after`: how many such steps run normally first (default 0).
This module is the only place that reads the variable.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping

from generation.types import GenerationRequest

log = logging.getLogger("muse.bot.cli.fault_injection")

ENV = "MUSE_TEST_FAULT"
KINDS = ("hang", "raise", "oom", "slow")
SLOW_STEP_S = 0.05
PHASES = ("prefill", "decode")

FaultHook = Callable[[str, list[GenerationRequest]], None]


def fault_hook_from_env(environ: Mapping[str, str] = os.environ) -> FaultHook | None:
    """The engine fault hook `MUSE_TEST_FAULT` asks for, or None (unset: the normal case)."""
    spec = environ.get(ENV, "").strip()
    if not spec:
        return None
    parts = spec.split(":")
    kind, phase = parts[0], parts[1] if len(parts) > 1 else "decode"
    after = int(parts[2]) if len(parts) > 2 and parts[2] else 0
    if kind not in KINDS or phase not in PHASES or after < 0:
        raise ValueError(f"{ENV}={spec!r}: expected <hang|raise|oom|slow>:<prefill|decode>[:<n>]")
    log.warning("%s=%s is set: the engine will fail on purpose (tests only)", ENV, spec)
    return make_hook(kind, phase, after)


def make_hook(kind: str, phase: str, after: int = 0) -> FaultHook:
    """A hook that fails (or slows) the `after`+1-th and every later step of `phase`."""
    seen = 0

    def hook(step: str, requests: list[GenerationRequest]) -> None:
        nonlocal seen
        if step != phase:
            return
        seen += 1
        if seen <= after:
            return
        if kind == "slow":
            time.sleep(SLOW_STEP_S)  # on the engine's worker thread, never the event loop
            return
        if kind == "hang":
            threading.Event().wait()  # forever: only the watchdog ends this
        if kind == "oom":
            import torch

            raise torch.OutOfMemoryError(f"{ENV}: injected out of memory")
        raise RuntimeError(f"{ENV}: injected failure in {step}")

    return hook
