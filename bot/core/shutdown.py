"""A clean stop (SIGTERM from systemd or `docker stop`, or Ctrl-C).

New generations are refused with "Muse is restarting — try again in a minute" (see
`bot.core.run.open_stream`); running ones get `grace_s` to finish; the rest are cut off: stored
`interrupted`, their replies edited to say so (with 🔁). The caller then closes the engine,
the Discord connection and the database.
"""

from __future__ import annotations

import asyncio
import logging

from bot.core.app import Muse
from generation.backend import Backend

log = logging.getLogger("muse.bot.core.shutdown")

FINAL_EDITS_S = 10.0  # after the cut: time for the final edits of the cut-off replies


async def drain(app: Muse, grace_s: float, final_edits_s: float = FINAL_EDITS_S) -> int:
    """Stop accepting, wait up to `grace_s` for running generations, cut off the rest and
    wait (up to `final_edits_s`) until their replies say so; returns how many were cut off."""
    app.stopping = True
    if app.active:
        log.info("stopping: waiting up to %.0f s for %d generation(s)", grace_s, len(app.active))
    await wait_idle(app, grace_s)
    cut = list(app.active.values())
    for run in cut:
        run.interrupted = True
        app.engine.abort(run.request_id)
    if cut:
        log.warning("stopping: cut off %d generation(s); marking them interrupted", len(cut))
    if not await wait_idle(app, final_edits_s):
        log.warning("stopping: %d repl(ies) could not be finished in time", len(app.active))
    return len(cut)


async def wait_idle(app: Muse, timeout_s: float) -> bool:
    """Wait until no generation is streaming, or `timeout_s` passed; True if idle."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while app.active and loop.time() < deadline:  # noqa: ASYNC110 - runs end in many places
        await asyncio.sleep(0.05)
    return not app.active


async def close_engine(engine: Backend, load_wait_s: float = 120.0) -> None:
    """Close the engine; first let a model that is still loading finish loading: the loading
    thread cannot be interrupted, and exiting under it aborts the process (SIGABRT, not 0)."""
    try:
        await asyncio.wait_for(engine.wait_ready(), load_wait_s)
    except Exception as exc:  # noqa: BLE001 - a failed load has nothing left to wait for
        log.info("stopping: the model did not load (%s)", exc)
    await engine.aclose(0)
