"""Who waits, who runs, and what to tell a request that does not fit.

The event loop queues and aborts requests here; the worker admits them into the running rows,
sweeps out the cancelled and timed-out ones and retires the finished ones. Both sides hold
`lock` (a condition the worker sleeps on while there is nothing to do).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from generation.engine.fair_queue import FairQueue
from generation.engine.jobs import Job
from generation.engine.mailbox import Mailbox
from generation.engine.running_rows import RunningRows
from generation.errors import EngineBusy, EngineDead
from generation.types import FinishReason, GenerationRequest


class Scheduler:
    """The waiting line (fair across users), the running rows, every job in between (being
    prefilled), the batch cap, and the average time a job takes (for "try again in")."""

    def __init__(self, max_batch: int, queue_size: int) -> None:
        self.lock = threading.Condition()
        self.waiting = FairQueue()
        self.rows = RunningRows()
        self.jobs: dict[str, Job] = {}  # waiting, being prefilled or running, by request id
        self.max_batch = max_batch
        self.batch_cap = max_batch  # lowered after an out-of-memory (generation/engine/oom.py)
        self.queue_size = queue_size
        self.stopping = False
        self.dead: str | None = None
        # Adapters to serve, or (folder None) to stop serving, from the next step on:
        # (name, folder, told when it is done).
        self.new_adapters: list[tuple[str, Path | None, Future[None]]] = []
        self._seq = itertools.count()
        self._avg_job_s = 10.0

    # -- the event loop's side (lock held) ----------------------------------------------------
    def enqueue(
        self,
        request: GenerationRequest,
        loop: asyncio.AbstractEventLoop,
        max_new_tokens: int,
        mailbox: Mailbox,
    ) -> Job:
        """Queue `request`, or raise `EngineBusy` when the queue is full."""
        # `jobs` also holds requests being prefilled (neither waiting nor running yet).
        if len(self.jobs) >= self.queue_size:
            raise EngineBusy(self.retry_after())
        job = Job(request, loop, next(self._seq), max_new_tokens, mailbox)
        self.waiting.push(job, min((j.tag for j in self.jobs.values()), default=None))
        self.jobs[request.request_id] = job
        self.lock.notify_all()
        return job

    def position(self, request_id: str) -> int | None:
        """1-based place in the waiting line; 0 once running; None when unknown or finished."""
        job = self.jobs.get(request_id)
        if job is None:
            return None
        if job not in self.waiting:
            return 0  # being prefilled or decoded
        return self.waiting.position(job)

    def load(self) -> tuple[int, int]:
        """(running, waiting)."""
        return len(self.jobs) - len(self.waiting), len(self.waiting)

    def retry_after(self) -> float:
        rounds = math.ceil((len(self.waiting) + 1) / max(1, self.batch_cap))
        return max(1.0, round(rounds * self._avg_job_s))

    def cancel_all(self) -> None:
        for job in [*self.waiting, *self.rows]:
            job.aborted = True
        self.lock.notify_all()

    # -- the worker's side (lock held unless said) --------------------------------------------
    def idle(self) -> bool:
        return not self.waiting and not self.rows

    def take_new_adapters(self) -> list[tuple[str, Path | None, Future[None]]]:
        taken, self.new_adapters = self.new_adapters, []
        return taken

    def admit(self) -> list[Job]:
        """Take as many waiting jobs as fit beside the running rows."""
        return self.waiting.take(self.batch_cap - len(self.rows))

    def sweep(self, model_id: str) -> None:
        """Retire running rows and waiting jobs that were cancelled or ran out of time."""
        now = time.monotonic()
        for job in self.rows:
            if job.aborted or self.stopping:
                self.drop(job, "cancelled", model_id)
            elif now > job.deadline:
                self.drop(job, "timeout", model_id)
        for job in self.waiting:
            if job.aborted or self.stopping or now > job.deadline:
                self.waiting.remove(job)
                self.retire(job, "timeout" if now > job.deadline else "cancelled", model_id)

    def drop(self, job: Job, reason: FinishReason, model_id: str) -> None:
        """Take a running job out of the batch and finish it."""
        self.rows.drop(job)
        self.retire(job, reason, model_id)

    def retire(
        self, job: Job, reason: FinishReason, model_id: str, error: str | None = None
    ) -> None:
        """Finish a job that left the batch or the queue."""
        job.finish(reason, model_id, error)
        self.jobs.pop(job.request.request_id, None)
        self.lock.notify_all()
        elapsed = time.monotonic() - job.submitted
        self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * elapsed

    def fail(self, job: Job, exc: BaseException) -> None:
        """Hand `exc` to `job` and forget it (takes the lock)."""
        with self.lock:
            self.rows.forget(job)
            self.jobs.pop(job.request.request_id, None)
            self.lock.notify_all()
        job.fail(exc)

    def fail_rows(self, jobs: list[Job], exc: BaseException) -> None:
        """Fail `jobs` unless they finished or went back to the queue, and drop the batch
        (takes the lock)."""
        with self.lock:
            doomed = [job for job in jobs if not job.done and job not in self.waiting]
        for job in doomed:
            self.fail(job, exc)
        with self.lock:
            self.rows.clear()

    def fail_waiting(self, exc: BaseException) -> None:
        """The model never loaded: fail whoever waits (takes the lock)."""
        with self.lock:
            for job in self.waiting:
                job.fail(exc)
            self.waiting.clear()

    def fail_everyone(self, reason: str) -> None:
        """The engine is dead: fail every job with `EngineDead` and serve no more (takes the
        lock)."""
        with self.lock:
            self.dead = reason
            # Also the jobs taken from the queue whose prompts are being prepared or prefilled
            # right now, in neither list (a hung prefill left them waiting); failing twice is
            # a no-op.
            for job in [*self.jobs.values(), *self.waiting, *self.rows]:
                job.fail(EngineDead(reason))
            self.waiting.clear()
            # Only the jobs: a step still in flight may yet sample from the batch's sampler.
            self.rows.jobs.clear()
            self.jobs.clear()
