"""The engine: one worker thread owns the model and decodes every running request together.

The event loop only enqueues requests and receives chunks (one `call_soon_threadsafe` per step,
through `Mailbox`); tokenising, prefill, decoding and detokenising all happen on the worker
(generation/engine/worker.py). Who waits and who runs is the scheduler's
(generation/engine/scheduler.py); the running rows keep their cache and sampler in step
(generation/engine/running_rows.py); running out of memory halves the batch
(generation/engine/oom.py). The base model and every registered LoRA adapter are served at once,
rows of different adapters decoded in one batch (generation/model/adapters.py).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from generation.engine.mailbox import Mailbox
from generation.engine.scheduler import Scheduler
from generation.engine.watchdog import StepWatchdog
from generation.engine.worker import FaultHook, Worker
from generation.errors import EngineBusy, EngineDead, GenerationFailed, UnknownModel
from generation.model.loading import LoadedModel
from generation.model.prefix_cache import PrefixCache
from generation.outbox import consume
from generation.types import GenerationChunk, GenerationRequest, GenerationResult, drain

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
        engine._thread.join(EXIT_JOIN_S)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    max_batch: int = 16  # MUSE_MAX_BATCH
    queue_size: int = 64  # MUSE_QUEUE_SIZE: waiting + running
    max_new_tokens: int = 512  # MUSE_MAX_TOKENS: cap on any request
    step_timeout_s: float = 120.0  # a single step longer than this means the engine is hung
    prefix_cache_mb: int = 256  # remembered prompts' keys and values (0: off)
    # LoRA adapters served beside the base model: name → PEFT adapter folder (the registry's).
    adapters: Mapping[str, Path | str] = field(default_factory=dict)


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
        self._on_fatal = on_fatal
        self._scheduler = Scheduler(self.config.max_batch, self.config.queue_size)
        self._mailbox = Mailbox()  # chunks on their way to the event loop(s)
        self.prefixes = PrefixCache(self.config.prefix_cache_mb * 2**20)
        self._watchdog = StepWatchdog(
            self.config.step_timeout_s,
            self._hung,
            lambda: (
                not self._scheduler.dead
                and not (self._scheduler.stopping and not self._thread.is_alive())
            ),
        )
        self._worker = Worker(
            loader,
            self._scheduler,
            self._mailbox,
            self.prefixes,
            self._watchdog,
            fault_hook,
            self.config.adapters,
        )
        self._thread = threading.Thread(target=self._worker.run, name="muse-engine", daemon=True)

    # -- the event loop's side -------------------------------------------------------------
    def start(self) -> Engine:
        _LIVE.add(self)
        self._thread.start()
        self._watchdog.start()
        return self

    async def wait_ready(self) -> LoadedModel:
        """Wait (off the loop) until the model is loaded; raises the loader's error."""
        await asyncio.to_thread(self._worker.ready.wait)
        if self._worker.load_error is not None:
            raise self._worker.load_error
        assert self.loaded is not None
        return self.loaded

    @property
    def loaded(self) -> LoadedModel | None:
        """The model, once the worker has loaded it."""
        return self._worker.loaded

    @property
    def model_id(self) -> str:
        return self.loaded.model_id if self.loaded else ""

    @property
    def context_tokens(self) -> int | None:
        """The loaded model's context length (`max_position_embeddings`); None until loaded."""
        return self._worker.context

    def models(self) -> list[str]:
        """The base model's id, then the name of every adapter served; empty until loaded."""
        return self._worker.served()

    async def add_adapter(self, name: str, path: Path | str) -> None:
        """Serve the LoRA adapter in `path` as `name` from the next step on, without a restart
        (a freshly tuned one); raises `AdapterError` when it cannot be served."""
        told: Future[None] = Future()
        with self._scheduler.lock:
            if self._scheduler.dead or self._worker.load_error or self._scheduler.stopping:
                raise EngineDead("the engine is not serving")
            self._scheduler.new_adapters.append((name, Path(path), told))
            self._scheduler.lock.notify_all()
        await asyncio.wrap_future(told)

    async def remove_adapter(self, name: str) -> None:
        """Stop serving the adapter `name` from the next step on; raises `UnknownModel` when no
        adapter has that name, `AdapterError` while a request waiting or running names it."""
        served = self.models()
        if name not in served[1:]:
            raise UnknownModel(name, served)
        told: Future[None] = Future()
        with self._scheduler.lock:
            if self._scheduler.dead or self._worker.load_error or self._scheduler.stopping:
                raise EngineDead("the engine is not serving")
            self._scheduler.new_adapters.append((name, None, told))
            self._scheduler.lock.notify_all()
        await asyncio.wrap_future(told)

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Queue `request` now (raising `EngineBusy` at once when full, `UnknownModel` when it
        names a model not served) and return its chunks."""
        loop = asyncio.get_running_loop()
        scheduler = self._scheduler
        if request.model is not None:
            self._check_model(request.model)
        with scheduler.lock:
            load_error = self._worker.load_error
            if scheduler.dead or load_error:
                raise EngineDead(scheduler.dead or f"the model failed to load: {load_error}")
            if scheduler.stopping:
                raise EngineBusy(30.0, "Muse is shutting down")
            cap = min(request.max_new_tokens, self.config.max_new_tokens)
            job = scheduler.enqueue(request, loop, max(1, cap), self._mailbox)
        rid = request.request_id
        return consume(
            job.outbox,
            done=lambda: job.done,
            abort=lambda: self.abort(rid),  # the consumer left: free its row
            wrap=_failed,
        )

    def _check_model(self, name: str) -> None:
        served = self.models()
        if served and name not in served:
            raise UnknownModel(name, served)
        # Still loading (nothing served yet): the worker decides once it knows.

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """The whole text of `request`; raises `GenerationFailed` if the worker failed it."""
        return await drain(self.stream(request))

    def abort(self, request_id: str) -> None:
        """Stop a request: a waiting one leaves the queue, a running one leaves the batch."""
        scheduler = self._scheduler
        with scheduler.lock:
            job = scheduler.jobs.get(request_id)
            if job is None:
                return
            job.aborted = True
            if job in scheduler.waiting:
                scheduler.waiting.remove(job)
                scheduler.retire(job, "cancelled", self.model_id)
            scheduler.lock.notify_all()
        self._mailbox.flush()

    def queue_position(self, request_id: str) -> int | None:
        """1-based place in the waiting line; 0 once running; None when unknown or finished."""
        with self._scheduler.lock:
            return self._scheduler.position(request_id)

    def load(self) -> tuple[int, int]:
        """(running, waiting) right now."""
        with self._scheduler.lock:
            return self._scheduler.load()

    def close(self) -> None:
        """Cancel everything and let the worker exit."""
        with self._scheduler.lock:
            self._scheduler.stopping = True
            self._scheduler.cancel_all()

    async def aclose(self, grace_s: float = 0.0) -> None:
        """Stop accepting; let running requests finish for up to `grace_s`, then cancel the rest."""
        with self._scheduler.lock:
            self._scheduler.stopping = True
        if grace_s > 0:
            await asyncio.to_thread(self._wait_idle, grace_s)
        self.close()
        await asyncio.to_thread(self._thread.join, 5.0)

    def _wait_idle(self, timeout: float) -> bool:
        scheduler = self._scheduler
        with scheduler.lock:
            return scheduler.lock.wait_for(lambda: not scheduler.jobs, timeout)

    # -- what tests and benchmarks watch ---------------------------------------------------
    @property
    def steps(self) -> int:
        """Decoding steps so far."""
        return self._worker.steps

    @steps.setter
    def steps(self, value: int) -> None:
        self._worker.steps = value

    @property
    def max_rows_seen(self) -> int:
        """The largest batch decoded together."""
        return self._worker.max_rows_seen

    @max_rows_seen.setter
    def max_rows_seen(self, value: int) -> None:
        self._worker.max_rows_seen = value

    @property
    def _batch_cap(self) -> int:
        return self._scheduler.batch_cap

    @_batch_cap.setter
    def _batch_cap(self, value: int) -> None:
        self._scheduler.batch_cap = value

    # -- a hung step -----------------------------------------------------------------------
    def _hung(self, reason: str) -> None:
        """The watchdog's verdict: tell the supervisor (in Muse it exits the process at once, so
        the rows stay `running` and the next start marks them interrupted and edits their
        replies — whether the loop had time to record a failure no longer depends on timing),
        then fail everyone (when the process goes on, as in tests)."""
        log.critical("engine watchdog: %s; failing every request", reason)
        if self._on_fatal is not None:
            self._on_fatal(reason)
        self._scheduler.fail_everyone(reason)
        self._mailbox.flush()


def _failed(exc: BaseException) -> BaseException:
    if isinstance(exc, UnknownModel):  # named a model refused while the engine loaded
        return UnknownModel(exc.model, exc.served)
    return GenerationFailed(str(exc))
