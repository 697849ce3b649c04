"""Out of memory in a step: make room, halve the batch, requeue its rows, grow back slowly."""

from __future__ import annotations

import logging

import torch

from generation.engine.jobs import Job
from generation.engine.scheduler import Scheduler
from generation.model.prefix_cache import PrefixCache

log = logging.getLogger("muse.generation.engine")

GROW_BACK_STEPS = 64  # calm decoding steps before the batch cap grows by one row


class MemoryRecovery:
    """What the worker does when a prefill, a join or a decoding step runs out of memory."""

    def __init__(self, scheduler: Scheduler, prefixes: PrefixCache) -> None:
        self._scheduler = scheduler
        self._prefixes = prefixes
        self.calm_steps = 0  # decoding steps since the last out-of-memory

    def recover(self, jobs: list[Job], phase: str) -> None:
        """Halve the batch and requeue `jobs`; a request that does not fit even alone fails."""
        scheduler = self._scheduler
        self._prefixes.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        others = [job for job in scheduler.rows if job not in jobs]
        if len(jobs) == 1 and not others:
            scheduler.fail(jobs[0], RuntimeError("out of memory even for this request alone"))
            return
        rows = len(jobs) + len(others)
        log.warning("out of memory in %s with %d rows: retrying in smaller batches", phase, rows)
        with scheduler.lock:
            # Newcomers that did not fit beside the running rows wait until some have finished.
            scheduler.batch_cap = max(1, rows // 2)
            self.calm_steps = 0
            for job in jobs:
                scheduler.rows.forget(job)
            # Requeued rows keep their tokens and sampler state; a re-prefill resumes them exactly.
            scheduler.waiting.requeue(jobs)

    def calm_step(self) -> None:
        """A decoding step went through: after enough of them, allow one more row."""
        self.calm_steps += 1
        scheduler = self._scheduler
        if scheduler.batch_cap < scheduler.max_batch and self.calm_steps % GROW_BACK_STEPS == 0:
            scheduler.batch_cap += 1
