"""The worker thread: it loads the model and its adapters, then steps until the engine stops.

Each step serves adapters added since the last one, admits waiting requests into the running
batch (fairly across users), retires finished, cancelled and timed-out rows, prefills the
newcomers and decodes one token for every row, each row through its own adapter (or none).
Tokenising, prefill, decoding and detokenising all happen here, never on the event loop.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path

import torch

from generation.engine.jobs import Job
from generation.engine.mailbox import Mailbox
from generation.engine.oom import MemoryRecovery
from generation.engine.sampling import BatchSampler
from generation.engine.scheduler import Scheduler
from generation.engine.watchdog import StepWatchdog
from generation.errors import AdapterError, EngineDead, UnknownModel
from generation.model.adapters import Adapters, load_adapters
from generation.model.batch_runner import BatchRunner
from generation.model.loading import LoadedModel, eos_token_ids
from generation.model.prefix_cache import PrefixCache
from generation.model.prompting import encode_messages
from generation.tasks.forms import form_turn
from generation.types import GenerationRequest

log = logging.getLogger("muse.generation.engine")

# On a GPU the worker is bound by launching kernels from Python: each torch call drops and
# retakes the GIL, and whenever the event loop's thread has taken it meanwhile the worker waits up
# to the interpreter's switch interval (5 ms by default) to get it back. Measured on an H200
# (benchmarks/README.md, GPU): a shorter interval made 16-row steps several times faster. On the
# CPU the model's long matrix products dominate and the default is left alone.
ACCELERATOR_SWITCH_INTERVAL_S = 0.0005

FaultHook = Callable[[str, list[GenerationRequest]], None]


class Worker:
    """The loop the engine's thread runs, and what it learnt loading the model."""

    def __init__(
        self,
        loader: Callable[[], LoadedModel],
        scheduler: Scheduler,
        mailbox: Mailbox,
        prefixes: PrefixCache,
        watchdog: StepWatchdog,
        fault_hook: FaultHook | None = None,
        adapter_folders: Mapping[str, Path | str] | None = None,
    ) -> None:
        self._loader = loader
        self._adapter_folders = dict(adapter_folders or {})
        self._scheduler = scheduler
        self._mailbox = mailbox  # chunks on their way to the event loop(s)
        self._prefixes = prefixes
        self._watchdog = watchdog
        self._fault_hook = fault_hook  # tests inject failures and hangs here
        self._memory = MemoryRecovery(scheduler, prefixes)
        self._runner: BatchRunner | None = None
        self.adapters: Adapters | None = None  # None while no adapter is served
        self._eos: set[int] = set()
        self.ready = threading.Event()  # set once the model loaded or failed to
        self.loaded: LoadedModel | None = None
        self.load_error: BaseException | None = None
        self.context: int | None = None  # the model's context length in tokens
        self.steps = 0
        self.max_rows_seen = 0  # largest batch decoded together (observability and tests)

    def served(self) -> list[str]:
        """The base model's id and the served adapters' names; empty until loaded."""
        if not self.ready.is_set() or self.loaded is None:
            return []  # adapters may still be loading
        return [self.loaded.model_id, *(self.adapters.names if self.adapters else ())]

    def run(self) -> None:
        try:
            if self._load():
                self._loop()
        finally:
            with self._scheduler.lock:
                added = self._scheduler.take_new_adapters()
            for _, _, told in added:
                told.set_exception(EngineDead("the engine stopped"))
            if self.adapters is not None:
                self.adapters.remove_all()  # the model gets its own layers back

    def _loop(self) -> None:
        scheduler = self._scheduler
        model_id = self.loaded.model_id
        while True:
            with scheduler.lock:
                while not scheduler.stopping and scheduler.idle() and not scheduler.new_adapters:
                    scheduler.lock.wait()
                if scheduler.dead or (scheduler.stopping and scheduler.idle()):
                    return
                added = scheduler.take_new_adapters()
                scheduler.sweep(model_id)
                newcomers = scheduler.admit()
                in_use = {job.request.model for job in [*scheduler.waiting, *scheduler.rows]}
            in_use |= {job.request.model for job in newcomers}
            for name, folder, told in added:  # between steps: no forward is running
                if folder is None:
                    self._remove_adapter(name, told, in_use)
                else:
                    self._add_adapter(name, folder, told)
            try:
                newcomers = self._resolve(newcomers)
                if newcomers:
                    self._prefill(newcomers)
                if scheduler.rows and not scheduler.dead:
                    self._decode()
            except Exception as exc:  # outside a model step (a bug): fail what it touched, go on
                log.exception("the engine's step failed outside the model")
                scheduler.fail_rows([*scheduler.rows, *newcomers], exc)
            finally:
                self._mailbox.flush()  # the step's chunks: one wake-up of each event loop

    def _load(self) -> bool:
        try:
            self.loaded = self._loader()
            pad = self.loaded.tokenizer.pad_token_id
            self._runner = BatchRunner(self.loaded.model, pad if pad is not None else 0)
            if not self._runner.supports_merging:
                log.warning("this model's cache cannot merge rows: decoding one request at a time")
                self._scheduler.batch_cap = 1
            self._eos = eos_token_ids(self.loaded)
            if self._adapter_folders:
                loaded = self.loaded
                adapters = load_adapters(
                    loaded.model, self._adapter_folders, loaded.model_id, loaded.revision
                )
                if adapters:
                    self.adapters = self._runner.adapters = adapters
            config = self.loaded.model.config
            self.context = int(getattr(config, "max_position_embeddings", 2048))
            if self.loaded.device.type != "cpu":
                interval = min(sys.getswitchinterval(), ACCELERATOR_SWITCH_INTERVAL_S)
                sys.setswitchinterval(interval)
                log.info("GIL switch interval %.1f ms for the accelerator's worker", interval * 1e3)
        except BaseException as exc:
            log.exception("model failed to load")
            self.load_error = exc
            self._scheduler.fail_waiting(exc)
            self._mailbox.flush()
            self.ready.set()
            return False
        self.ready.set()
        return True

    def _add_adapter(self, name: str, folder: Path, told: Future[None]) -> None:
        """Serve one more adapter from now on (or tell why not)."""
        loaded = self.loaded
        adapters = self.adapters or Adapters(loaded.model, loaded.model_id, loaded.revision)
        try:
            adapters.add(name, folder)
        except AdapterError as exc:
            log.error("adapter %r refused (%s): %s", name, folder, exc)
            told.set_exception(exc)
            return
        except Exception as exc:  # a bug: the adapter is not served, the engine goes on
            log.exception("adapter %r failed to load from %s", name, folder)
            told.set_exception(AdapterError(f"{name!r} failed to load: {exc}"))
            return
        log.info("serving adapter %r from %s", name, folder)
        self.adapters = self._runner.adapters = adapters
        told.set_result(None)

    def _remove_adapter(self, name: str, told: Future[None], in_use: set[str | None]) -> None:
        """Stop serving `name`, unless a request waiting or running names it: cutting a row
        off its adapter mid-text would finish it with another model's words."""
        if name in in_use:
            told.set_exception(
                AdapterError(f"{name!r} is answering requests; unload it when they have finished")
            )
            return
        try:
            if self.adapters is None:
                raise AdapterError(f"{name!r} is not served")
            self.adapters.remove(name)
        except AdapterError as exc:
            told.set_exception(exc)
            return
        log.info("no longer serving adapter %r", name)
        told.set_result(None)

    def _resolve(self, jobs: list[Job]) -> list[Job]:
        """Give each job the slot of the model it names; fail those naming none served."""
        kept = []
        for job in jobs:
            name = job.request.model
            slot = 0 if name in (None, self.loaded.model_id) else None
            if slot is None and self.adapters is not None:
                slot = self.adapters.slot(name)
            if slot is None:
                self._scheduler.fail(job, UnknownModel(name, self.served()))
                continue
            job.slot = slot
            kept.append(job)
        return kept

    def _prefill(self, jobs: list[Job]) -> None:
        scheduler, runner = self._scheduler, self._runner
        # Rendering and tokenising the prompts is part of the step the watchdog watches: it runs
        # on this thread, and every other user waits while it does.
        self._watchdog.started()
        try:
            jobs = self._encode(jobs)
            if not jobs:
                return
            self._timed("prefill", jobs)
            sequences = [job.cached_tokens() for job in jobs]
            slots = [job.slot for job in jobs]
            order, batch, logits = runner.prefill_reusing(sequences, self._prefixes, slots)
            jobs = [jobs[index] for index in order]  # the batch's row order
            sampling = BatchSampler.for_rows(
                [job.request for job in jobs],
                [job.generator for job in jobs],
                [job.prompt_ids + job.generated for job in jobs],
                logits.shape[-1],
                logits.device,
            )
            with scheduler.lock:
                if scheduler.dead:
                    return  # the watchdog failed everyone while this prefill ran
                first = scheduler.rows.join(jobs, batch, sampling)  # joining can run out too
        except torch.OutOfMemoryError:
            self._memory.recover(jobs, "prefill")
            return
        except Exception as exc:
            log.exception("prefill failed for %d request(s)", len(jobs))
            for job in jobs:
                scheduler.fail(job, exc)
            return
        finally:
            self._watchdog.finished()
        # Rows resumed after an out-of-memory requeue already hold their next token.
        fresh = [row for row, job in enumerate(jobs) if job.pending is None]
        if fresh:
            tokens = scheduler.rows.choose(logits[fresh], [first + row for row in fresh])
            self._accept([jobs[row] for row in fresh], tokens)

    def _encode(self, jobs: list[Job]) -> list[Job]:
        """Give each new job its prompt's token ids; a prompt that cannot be encoded (a chat
        template that refuses its turns) fails its own request only."""
        context, kept = self.context, []
        for job in jobs:
            if not job.prompt_ids:
                budget = max(16, context - job.max_new_tokens)
                request = job.request
                try:
                    job.prompt_ids = encode_messages(
                        self.loaded.tokenizer, request.messages, budget, request.response_prefix
                    )
                except Exception as exc:
                    log.warning(
                        "request %s: its prompt cannot be encoded: %s", request.request_id, exc
                    )
                    self._scheduler.fail(job, exc)
                    continue
                job.max_new_tokens = min(job.max_new_tokens, context - len(job.prompt_ids))
            kept.append(job)
        return kept

    def _decode(self) -> None:
        scheduler, rows = self._scheduler, self._scheduler.rows
        jobs = list(rows)
        assert rows.batch is not None and rows.batch.size == len(jobs)
        try:
            self._timed("decode", jobs)
            logits = self._runner.step(rows.batch, [job.pending for job in jobs])
        except torch.OutOfMemoryError:
            self._memory.recover(jobs, "decode")
            return
        except Exception as exc:
            log.exception("decoding step failed for %d request(s)", len(jobs))
            for job in jobs:
                scheduler.fail(job, exc)
            return
        finally:
            self._watchdog.finished()
        self.steps += 1
        self.max_rows_seen = max(self.max_rows_seen, len(jobs))
        self._memory.calm_step()  # grows the batch back slowly after an out-of-memory
        self._accept(jobs, rows.choose(logits))

    def _accept(self, jobs: list[Job], tokens: list[int]) -> None:
        """Hand each job its sampled token; stream its text or retire it."""
        scheduler = self._scheduler
        tokenizer, model_id = self.loaded.tokenizer, self.loaded.model_id
        for job, token in zip(jobs, tokens, strict=True):
            if job.done or job not in scheduler.rows:
                continue  # failed meanwhile (the watchdog, an abort): nothing more to send
            if job.forced:  # a label the engine writes: the sampled token is not used
                token = job.forced.pop(0)
                scheduler.rows.overwrite(job, token)
            text = tokenizer.decode(job.generated + [token], skip_special_tokens=True)
            reason = job.accept(token, text, self._eos)
            if reason is None and job.request.labels and not job.forced:
                label, reason = form_turn(job.text, job.request.labels)
                if label:
                    job.forced = tokenizer.encode(label, add_special_tokens=False)
            if reason is None:
                job.emit_progress(model_id)
            else:
                with scheduler.lock:
                    scheduler.drop(job, reason, model_id)

    def _timed(self, phase: str, jobs: list[Job]) -> None:
        self._watchdog.started()
        if self._fault_hook is not None:
            self._fault_hook(phase, [job.request for job in jobs])
