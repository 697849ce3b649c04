"""The engine: one worker thread owns the model and decodes every running request together.

The event loop only enqueues requests and receives chunks (one `call_soon_threadsafe` per step,
through `Mailbox`); tokenising, prefill, decoding and detokenising all happen on the worker. Each
step the worker admits waiting requests into the running batch (fairly across users), retires
finished, cancelled and timed-out rows, and decodes one token for every row.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import math
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import torch

from generation.errors import EngineBusy, EngineDead, GenerationFailed
from generation.fair_queue import FairQueue
from generation.jobs import Job
from generation.kv_batch import BatchRunner, KVBatch
from generation.mailbox import Mailbox
from generation.models import LoadedModel, eos_token_ids
from generation.prefix_cache import PrefixCache
from generation.prompting import encode_messages
from generation.sampling import BatchSampler
from generation.types import GenerationChunk, GenerationRequest, GenerationResult, drain
from generation.watchdog import StepWatchdog

log = logging.getLogger("muse.generation.engine")

# Engines whose worker may still be inside torch when the interpreter exits: killing a thread
# there aborts the process ("terminate called without an active exception"), so at exit each
# is told to stop and given a moment to finish its step.
_LIVE: weakref.WeakSet[Engine] = weakref.WeakSet()
EXIT_JOIN_S = 10.0


@atexit.register
def _stop_live_engines() -> None:
    for engine in list(_LIVE):
        engine.close()
    for engine in list(_LIVE):
        engine._worker.join(EXIT_JOIN_S)


# On a GPU the worker is bound by launching kernels from Python: each torch call drops and
# retakes the GIL, and whenever the event loop's thread has taken it meanwhile the worker waits up
# to the interpreter's switch interval (5 ms by default) to get it back. Measured on an H200
# (benchmarks/README.md, GPU): a shorter interval made 16-row steps several times faster. On the
# CPU the model's long matrix products dominate and the default is left alone.
ACCELERATOR_SWITCH_INTERVAL_S = 0.0005

FaultHook = Callable[[str, list[GenerationRequest]], None]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    max_batch: int = 16  # MUSE_MAX_BATCH
    queue_size: int = 64  # MUSE_QUEUE_SIZE: waiting + running
    max_new_tokens: int = 512  # MUSE_MAX_TOKENS: cap on any request
    step_timeout_s: float = 120.0  # a single step longer than this means the engine is hung
    prefix_cache_mb: int = 256  # remembered prompts' keys and values (0: off)


class Engine:
    """`stream` / `generate` / `abort` over a model loaded by `loader` on the worker thread."""

    def __init__(
        self,
        loader: Callable[[], LoadedModel],
        config: EngineConfig | None = None,
        on_fatal: Callable[[str], None] | None = None,
        fault_hook: FaultHook | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self._loader = loader
        self._on_fatal = on_fatal
        self._fault_hook = fault_hook  # tests inject failures and hangs here
        self._lock = threading.Condition()
        self._waiting = FairQueue()
        self._running: list[Job] = []
        self._jobs: dict[str, Job] = {}
        self._mailbox = Mailbox()  # chunks on their way to the event loop(s)
        self.prefixes = PrefixCache(self.config.prefix_cache_mb * 2**20)
        self._seq = itertools.count()
        self._batch: KVBatch | None = None
        self._sampling: BatchSampler | None = None  # the same rows' sampling state
        self._batch_cap = self.config.max_batch
        self._calm_steps = 0  # decoding steps since the last out-of-memory
        self._stopping = False
        self._dead: str | None = None
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._avg_job_s = 10.0
        self.loaded: LoadedModel | None = None
        self.steps = 0
        self.max_rows_seen = 0  # largest batch decoded together (observability and tests)
        self._worker = threading.Thread(target=self._run, name="muse-engine", daemon=True)
        self._watchdog = StepWatchdog(
            self.config.step_timeout_s,
            self._hung,
            lambda: not self._dead and not (self._stopping and not self._worker.is_alive()),
        )

    # -- the event loop's side -------------------------------------------------------------
    def start(self) -> Engine:
        _LIVE.add(self)
        self._worker.start()
        self._watchdog.start()
        return self

    async def wait_ready(self) -> LoadedModel:
        """Wait (off the loop) until the model is loaded; raises the loader's error."""
        await asyncio.to_thread(self._ready.wait)
        if self._load_error is not None:
            raise self._load_error
        assert self.loaded is not None
        return self.loaded

    @property
    def model_id(self) -> str:
        return self.loaded.model_id if self.loaded else ""

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Queue `request` now (raising `EngineBusy` at once when full) and return its chunks."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._dead or self._load_error:
                raise EngineDead(self._dead or f"the model failed to load: {self._load_error}")
            if self._stopping:
                raise EngineBusy(30.0, "Muse is shutting down")
            # _jobs also holds requests being prefilled (neither waiting nor running yet).
            if len(self._jobs) >= self.config.queue_size:
                raise EngineBusy(self._retry_after())
            cap = min(request.max_new_tokens, self.config.max_new_tokens)
            job = Job(request, loop, next(self._seq), max(1, cap), self._mailbox)
            self._waiting.push(job, min((j.tag for j in self._jobs.values()), default=None))
            self._jobs[request.request_id] = job
            self._lock.notify_all()
        return self._consume(job)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """The whole text of `request`; raises `GenerationFailed` if the worker failed it."""
        return await drain(self.stream(request))

    def abort(self, request_id: str) -> None:
        """Stop a request: a waiting one leaves the queue, a running one leaves the batch."""
        with self._lock:
            job = self._jobs.get(request_id)
            if job is None:
                return
            job.aborted = True
            if job in self._waiting:
                self._waiting.remove(job)
                self._retire(job, "cancelled")
            self._lock.notify_all()
        self._mailbox.flush()

    def queue_position(self, request_id: str) -> int | None:
        """1-based place in the waiting line; 0 once running; None when unknown or finished."""
        with self._lock:
            job = self._jobs.get(request_id)
            if job is None:
                return None
            if job not in self._waiting:
                return 0  # being prefilled or decoded
            return self._waiting.position(job)

    def load(self) -> tuple[int, int]:
        """(running, waiting) right now."""
        with self._lock:
            return len(self._jobs) - len(self._waiting), len(self._waiting)

    def close(self) -> None:
        """Cancel everything and let the worker exit."""
        with self._lock:
            self._stopping = True
            for job in [*self._waiting, *self._running]:
                job.aborted = True
            self._lock.notify_all()

    async def aclose(self, grace_s: float = 0.0) -> None:
        """Stop accepting; let running requests finish for up to `grace_s`, then cancel the rest."""
        with self._lock:
            self._stopping = True
        if grace_s > 0:
            await asyncio.to_thread(self._wait_idle, grace_s)
        self.close()
        await asyncio.to_thread(self._worker.join, 5.0)

    def _wait_idle(self, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: not self._jobs, timeout)

    async def _consume(self, job: Job) -> AsyncIterator[GenerationChunk]:
        try:
            while True:
                item = await job.outbox.get()
                if isinstance(item, BaseException):
                    raise GenerationFailed(str(item)) from item
                yield item
                if item.finished:
                    return
        finally:
            if not job.done:
                self.abort(job.request.request_id)  # the consumer left: free its row

    # -- the worker's side -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.loaded = self._loader()
            tokenizer = self.loaded.tokenizer
            pad = tokenizer.pad_token_id
            self._runner = BatchRunner(self.loaded.model, pad if pad is not None else 0)
            if not self._runner.supports_merging:
                log.warning("this model's cache cannot merge rows: decoding one request at a time")
                self._batch_cap = 1
            self._eos = eos_token_ids(self.loaded)
            self._context = int(getattr(self.loaded.model.config, "max_position_embeddings", 2048))
            if self.loaded.device.type != "cpu":
                interval = min(sys.getswitchinterval(), ACCELERATOR_SWITCH_INTERVAL_S)
                sys.setswitchinterval(interval)
                log.info("GIL switch interval %.1f ms for the accelerator's worker", interval * 1e3)
        except BaseException as exc:
            log.exception("model failed to load")
            self._load_error = exc
            with self._lock:
                for job in [*self._waiting]:
                    job.fail(exc)
                self._waiting.clear()
            self._mailbox.flush()
            self._ready.set()
            return
        self._ready.set()
        while True:
            with self._lock:
                while not self._stopping and not self._waiting and not self._running:
                    self._lock.wait()
                if self._dead or (self._stopping and not self._waiting and not self._running):
                    return
                self._sweep()
                newcomers = self._admit()
            try:
                if newcomers:
                    self._prefill(newcomers)
                if self._running and not self._dead:
                    self._decode()
            except Exception as exc:  # outside a model step (a bug): fail what it touched, go on
                log.exception("the engine's step failed outside the model")
                self._fail_rows([*self._running, *newcomers], exc)
            finally:
                self._mailbox.flush()  # the step's chunks: one wake-up of each event loop

    def _admit(self) -> list[Job]:
        return self._waiting.take(self._batch_cap - len(self._running))

    def _sweep(self) -> None:
        """Retire running rows that were cancelled or ran out of time."""
        now = time.monotonic()
        for job in list(self._running):
            if job.aborted or self._stopping:
                self._drop(job, "cancelled")
            elif now > job.deadline:
                self._drop(job, "timeout")
        for job in self._waiting:
            if job.aborted or self._stopping or now > job.deadline:
                self._waiting.remove(job)
                self._retire(job, "timeout" if now > job.deadline else "cancelled")

    def _prefill(self, jobs: list[Job]) -> None:
        for job in jobs:
            if not job.prompt_ids:
                budget = max(16, self._context - job.max_new_tokens)
                job.prompt_ids = encode_messages(
                    self.loaded.tokenizer, job.request.messages, budget, job.request.response_prefix
                )
                job.max_new_tokens = min(job.max_new_tokens, self._context - len(job.prompt_ids))
        try:
            self._timed("prefill", jobs)
            sequences = [job.cached_tokens() for job in jobs]
            order, batch, logits = self._runner.prefill_reusing(sequences, self.prefixes)
            jobs = [jobs[index] for index in order]  # the batch's row order
            sampling = BatchSampler.for_rows(
                [job.request for job in jobs],
                [job.generator for job in jobs],
                [job.prompt_ids + job.generated for job in jobs],
                logits.shape[-1],
                logits.device,
            )
            with self._lock:
                if self._dead:
                    return  # the watchdog failed everyone while this prefill ran
                first = len(self._running)
                if self._batch is not None:  # joining copies the cache: it can run out too
                    batch, sampling = self._batch.merge(batch), self._sampling.merge(sampling)
                self._batch, self._sampling = batch, sampling
                self._running.extend(jobs)
        except torch.OutOfMemoryError:
            self._out_of_memory(jobs, "prefill")
            return
        except Exception as exc:
            log.exception("prefill failed for %d request(s)", len(jobs))
            for job in jobs:
                self._fail(job, exc)
            return
        finally:
            self._watchdog.finished()
        # Rows resumed after an out-of-memory requeue already hold their next token.
        fresh = [row for row, job in enumerate(jobs) if job.pending is None]
        if fresh:
            tokens = self._sampling.choose(logits[fresh], [first + row for row in fresh])
            self._accept([jobs[row] for row in fresh], tokens)

    def _decode(self) -> None:
        jobs = list(self._running)
        assert self._batch is not None and self._batch.size == len(jobs)
        try:
            self._timed("decode", jobs)
            logits = self._runner.step(self._batch, [job.pending for job in jobs])
        except torch.OutOfMemoryError:
            self._out_of_memory(jobs, "decode")
            return
        except Exception as exc:
            log.exception("decoding step failed for %d request(s)", len(jobs))
            for job in jobs:
                self._fail(job, exc)
            return
        finally:
            self._watchdog.finished()
        self.steps += 1
        self.max_rows_seen = max(self.max_rows_seen, len(jobs))
        self._calm_steps += 1
        if self._batch_cap < self.config.max_batch and self._calm_steps % 64 == 0:
            self._batch_cap += 1  # grow back slowly after an out-of-memory
        self._accept(jobs, self._sampling.choose(logits))

    def _accept(self, jobs: list[Job], tokens: list[int]) -> None:
        """Hand each job its sampled token; stream its text or retire it."""
        tokenizer, model_id = self.loaded.tokenizer, self.loaded.model_id
        for job, token in zip(jobs, tokens, strict=True):
            if job.done or job not in self._running:
                continue  # failed meanwhile (the watchdog, an abort): nothing more to send
            text = tokenizer.decode(job.generated + [token], skip_special_tokens=True)
            reason = job.accept(token, text, self._eos)
            if reason is None:
                job.emit_progress(model_id)
            else:
                with self._lock:
                    self._drop(job, reason)

    def _timed(self, phase: str, jobs: list[Job]) -> None:
        self._watchdog.started()
        if self._fault_hook is not None:
            self._fault_hook(phase, [job.request for job in jobs])

    def _drop(self, job: Job, reason: str) -> None:
        """Take a running job out of the batch and finish it (lock held)."""
        row = self._running.index(job)
        self._running.pop(row)
        keep = [i for i in range(self._batch.size) if i != row]
        if keep:
            self._batch, self._sampling = self._batch.keep(keep), self._sampling.keep(keep)
        else:
            self._clear_rows()
        self._retire(job, reason)

    def _clear_rows(self) -> None:
        self._batch = self._sampling = None

    def _retire(self, job: Job, reason: str, error: str | None = None) -> None:
        """Finish a job that left the batch or the queue (lock held)."""
        job.finish(reason, self.model_id, error)
        self._jobs.pop(job.request.request_id, None)
        self._lock.notify_all()
        elapsed = time.monotonic() - job.submitted
        self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * elapsed

    def _fail(self, job: Job, exc: BaseException) -> None:
        with self._lock:
            if job in self._running:
                self._running.remove(job)
                if not self._running:
                    self._clear_rows()
            self._jobs.pop(job.request.request_id, None)
            self._lock.notify_all()
        job.fail(exc)
        if not self._running:
            self._clear_rows()

    def _fail_rows(self, jobs: list[Job], exc: BaseException) -> None:
        """Fail `jobs` unless they finished or went back to the queue, and drop the batch."""
        with self._lock:
            doomed = [job for job in jobs if not job.done and job not in self._waiting]
        for job in doomed:
            self._fail(job, exc)
        with self._lock:
            self._running.clear()
            self._clear_rows()

    def _out_of_memory(self, jobs: list[Job], phase: str) -> None:
        """Halve the batch and requeue `jobs`; a request that does not fit even alone fails."""
        self.prefixes.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        others = [job for job in self._running if job not in jobs]
        if len(jobs) == 1 and not others:
            self._fail(jobs[0], RuntimeError("out of memory even for this request alone"))
            return
        rows = len(jobs) + len(others)
        log.warning("out of memory in %s with %d rows: retrying in smaller batches", phase, rows)
        with self._lock:
            # Newcomers that did not fit beside the running rows wait until some have finished.
            self._batch_cap = max(1, rows // 2)
            self._calm_steps = 0
            for job in jobs:
                if job in self._running:
                    self._running.remove(job)
            # Requeued rows keep their tokens and sampler state; a re-prefill resumes them exactly.
            self._waiting.requeue(jobs)
            if not self._running:
                self._clear_rows()

    def _retry_after(self) -> float:
        rounds = math.ceil((len(self._waiting) + 1) / max(1, self._batch_cap))
        return max(1.0, round(rounds * self._avg_job_s))

    def _hung(self, reason: str) -> None:
        """The watchdog's verdict: fail everyone, tell the supervisor (it exits the process)."""
        log.critical("engine watchdog: %s; failing every request", reason)
        with self._lock:
            self._dead = reason
            for job in [*self._waiting, *self._running]:
                job.fail(EngineDead(reason))
            self._waiting.clear()
            self._running.clear()
            self._jobs.clear()
        self._mailbox.flush()
        if self._on_fatal is not None:
            self._on_fatal(reason)
