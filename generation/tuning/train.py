"""`tune`: one LoRA adapter from Muse's exports, trained with TRL and published whole."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from generation.tuning.card import build_card
from generation.tuning.data import Split, load_examples, split
from generation.tuning.errors import TuningError, TuningStopped
from generation.tuning.output import (
    CARD,
    check_name,
    clean_leftovers,
    make_tmp,
    publish,
    refuse_existing,
    write_json,
)
from generation.tuning.plan import Choice, hyperparameters, kto_weights
from generation.tuning.rules import Screened, decide, screen_all
from generation.tuning.types import ProgressEvent, TuneConfig, TuneResult

log = logging.getLogger("muse.generation.tuning")


def tune(
    config: TuneConfig,
    progress: Callable[[ProgressEvent], None] | None = None,
    stop: threading.Event | None = None,
) -> TuneResult:
    """Train the adapter `config.name` and write it to `config.adapters_dir/NAME`.

    Checks the name, the data (after `config.rules`) and the method before loading anything.
    Setting `stop` (or
    Ctrl-C) ends the run after the current step with `TuningStopped`; a stopped, failed or
    killed run leaves no NAME folder.
    """
    started = time.perf_counter()
    name = check_name(config.name)
    adapters_dir = Path(config.adapters_dir)
    for leftover in clean_leftovers(adapters_dir):
        log.info("removed %s, left by a run that did not finish", leftover)
    refuse_existing(adapters_dir, name, config.force)
    screened = screen_all(load_examples(config.files), config.rules)
    choice = decide(screened, config.method, config.rules)
    kept = screened[choice.method]
    data = split(kept.examples, config.eval_share, config.seed)
    if choice.method == "kto":  # both labels must reach training: fail before loading
        kto_weights(data.counts["train"].desirable or 0, data.counts["train"].undesirable or 0)
    log.info("tuning %s: %s", name, choice.reason)
    tmp = make_tmp(adapters_dir, name)
    run = _Run(config, choice, data, kept, tmp, progress or _ignore, stop or threading.Event())
    try:
        return run.go(started)
    except KeyboardInterrupt as exc:
        raise TuningStopped(f"Tuning {name!r} was interrupted; no adapter was written.") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once published


def _ignore(event: ProgressEvent) -> None:
    pass


class _Run:
    """One run's steps, in order: load, evaluate, train, evaluate, save, publish."""

    def __init__(
        self,
        config: TuneConfig,
        choice: Choice,
        data: Split,
        kept: Screened,
        tmp: Path,
        report: Callable[[ProgressEvent], None],
        stop: threading.Event,
    ) -> None:
        self.config, self.choice, self.data, self.tmp = config, choice, data, tmp
        self.kept = kept
        self.report, self.stop = report, stop

    def go(self, started: float) -> TuneResult:
        import torch

        from generation.tuning.trainers import Progress, build_trainer, evaluate

        config, data = self.config, self.data
        self.report(ProgressEvent("load", message=f"loading {config.base or 'the default model'}"))
        base, base_info = _load_base(config)
        hp = hyperparameters(
            self.choice.method,
            data.counts["train"],
            device=base.device.type,
            bf16=base.dtype == torch.bfloat16,
            epochs=config.epochs,
            max_steps=config.max_steps,
            lr=config.lr,
            lora_r=config.lora_r,
            seed=config.seed,
        )
        scratch = self.tmp / "trainer"
        trainer = build_trainer(
            hp,
            base.model,
            base.tokenizer,
            data.train,
            data.eval,
            scratch,
            use_cpu=base.device.type == "cpu",
            callback=Progress(self.report, self.stop),
        )
        before = self._evaluate(trainer, evaluate, "before")
        train_started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - train_started
        self._check_stop(trainer)
        after = self._evaluate(trainer, evaluate, "after")
        self.report(ProgressEvent("save", message="writing the adapter"))
        shutil.rmtree(scratch, ignore_errors=True)
        trainer.model.save_pretrained(str(self.tmp))
        seconds = time.perf_counter() - started
        card = build_card(
            name=config.name,
            base=base_info,
            choice=self.choice,
            hp=hp,
            files=config.files,
            counts=data.counts,
            before=before,
            after=after,
            seconds=seconds,
            train_seconds=train_seconds,
            rules=config.rules,
            dropped=self.kept.dropped,
            contributors=len(data.contributors),
        )
        write_json(self.tmp / CARD, card)
        self._check_stop(trainer)
        path = publish(self.tmp, Path(config.adapters_dir), config.name, config.force)
        log.info("wrote %s (%s) in %.0f s", path, self.choice.method, seconds)
        return TuneResult(
            path,
            self.choice.method,
            self.choice.reason,
            data.counts,
            before,
            after,
            seconds,
            card,
            contributors=data.contributors,
            dropped=dict(self.kept.dropped),
        )

    def _evaluate(self, trainer: Any, evaluate: Callable[[Any], dict], when: str) -> dict:
        self._check_stop(trainer)
        if not self.data.eval:
            return {}
        self.report(ProgressEvent("evaluate", message=f"held-out metrics {when} training"))
        metrics = evaluate(trainer)
        self._check_stop(trainer)
        return metrics

    def _check_stop(self, trainer: Any) -> None:
        if self.stop.is_set():
            state = trainer.state
            raise TuningStopped(
                f"Tuning {self.config.name!r} was stopped at step {state.global_step}/"
                f"{state.max_steps}; no adapter was written."
            )


def _load_base(config: TuneConfig) -> tuple[Any, dict[str, str]]:
    """The base model (None: the bundled default, from its converted safetensors folder)."""
    from generation.errors import ModelLoadError
    from generation.model.loading import load_model

    try:
        base = load_model(config.base, config.device, config.cache_dir)
    except ModelLoadError as exc:
        raise TuningError(str(exc)) from exc
    info = {"id": base.model_id, "path": str(base.model.name_or_path), "revision": base.revision}
    return base, info


def default_base_path(cache_dir: Path | None = None) -> Path:
    """Where the bundled default model's converted safetensors folder lives: what a PEFT
    adapter trained on the default base names in its `adapter_config.json`. `tune` and
    `generation.model.loading.load_model` create it on first use."""
    from generation.model.loading import default_cache_dir, default_model_path, gguf_cache_folder

    return gguf_cache_folder(default_model_path(), Path(cache_dir or default_cache_dir()))
