"""TRL trainers with a LoRA adapter, built from `HyperParams`, and the progress callback."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from generation.tuning.plan import HyperParams
from generation.tuning.types import ProgressEvent

#: Trainer bookkeeping, not a measure of the adapter.
NOT_METRICS = (
    "runtime",
    "samples_per_second",
    "steps_per_second",
    "epoch",
    "num_tokens",
    "model_preparation_time",
)


class Progress(TrainerCallback):
    """Reports each optimizer step's loss and asks the trainer to stop once `stop` is set."""

    def __init__(self, report: Callable[[ProgressEvent], None], stop: threading.Event) -> None:
        self.report = report
        self.stop = stop

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.stop.is_set():
            control.should_training_stop = True
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> Any:
        if logs and "loss" in logs:
            loss = float(logs["loss"])
            message = f"step {state.global_step}/{state.max_steps} loss {loss:.4f}"
            self.report(ProgressEvent("train", state.global_step, state.max_steps, loss, message))
        # Checked again here: a callback that sets `stop` on this report stops before the next
        # step, not after it.
        if self.stop.is_set():
            control.should_training_stop = True
        return control


def lora_config(hp: HyperParams) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=hp.target_modules,
        task_type="CAUSAL_LM",
    )


def trl_args(hp: HyperParams, output_dir: Path, use_cpu: bool) -> dict[str, Any]:
    """The arguments every TRL config shares."""
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps or -1,
        max_length=hp.max_length,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",  # evaluated by hand, before and after
        report_to="none",
        disable_tqdm=True,
        seed=hp.seed,
        data_seed=hp.seed,
        bf16=hp.precision == "bf16",
        fp16=hp.precision == "fp16",
        use_cpu=use_cpu,
        **{_checkpointing_name(): hp.gradient_checkpointing},
    )


def _checkpointing_name() -> str:
    """transformers 5 renamed `gradient_checkpointing` (the old name warns)."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return (
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else "gradient_checkpointing"
    )


def build_trainer(
    hp: HyperParams,
    model: Any,
    tokenizer: Any,
    train: list[dict[str, Any]],
    held_out: list[dict[str, Any]],
    output_dir: Path,
    use_cpu: bool,
    callback: TrainerCallback,
) -> Any:
    """The TRL trainer for `hp.method`, wrapping `model` in a fresh LoRA adapter."""
    import datasets
    import trl
    from datasets import Dataset
    from transformers import PrinterCallback, ProgressCallback

    datasets.disable_progress_bars()  # progress is reported per step through `callback`
    common = trl_args(hp, output_dir, use_cpu)
    if hp.method == "sft":
        # Prompt–completion rows: TRL masks the prompt, so only the reply is learnt.
        args = trl.SFTConfig(**common, completion_only_loss=True, packing=False)
        trainer_class = trl.SFTTrainer
    elif hp.method == "dpo":
        args = trl.DPOConfig(**common, beta=hp.beta)
        trainer_class = trl.DPOTrainer
    else:
        args = trl.KTOConfig(
            **common,
            beta=hp.beta,
            desirable_weight=hp.desirable_weight,
            undesirable_weight=hp.undesirable_weight,
        )
        trainer_class = trl.KTOTrainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(held_out) if held_out else None,
        processing_class=tokenizer,
        peft_config=lora_config(hp),
        callbacks=[callback],
    )
    # Progress goes through `callback`; the trainer's own printing would interleave with it.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def evaluate(trainer: Any) -> dict[str, float]:
    """The held-out metrics (TRL's, `eval_` prefix dropped), bookkeeping left out."""
    raw = trainer.evaluate()
    metrics = {}
    for key, value in raw.items():
        name = key.removeprefix("eval_")
        if name in NOT_METRICS or not isinstance(value, int | float):
            continue
        metrics[name] = float(value) if math.isfinite(value) else float("nan")
    return metrics
