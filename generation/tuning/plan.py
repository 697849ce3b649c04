"""Which method the data supports, and the hyper-parameters it gets; pure, no torch.

Defaults follow TRL's documentation for LoRA on small data (its PEFT integration page, "LoRA
Without Regret" and the KTO trainer page): r=16, alpha=2r, dropout 0.05, every linear layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from generation.tuning.data import DataCounts, SplitCounts
from generation.tuning.errors import TuningError

METHODS = ("sft", "dpo", "kto")
MIN_SFT = 8  # rows
MIN_DPO = 8  # preference pairs
MIN_KTO = 8  # rated replies in all ...
MIN_KTO_EACH = 2  # ... with at least this many of each label, so training keeps both

# Learning rates. "LoRA Without Regret" (TRL docs) finds LoRA's best rate about 10x full
# fine-tuning's. SFT: 10 x TRL's full-SFT default 2e-5 = 2e-4, the rate TRL's LoRA SFT examples
# use. DPO and KTO: TRL's full-training default is 1e-6 (KTO's docs suggest 5e-7..5e-6), so
# LoRA's is ~1e-5; the same guide notes the ratio grows for short runs, and Muse's exports
# give a few dozen steps, so 2e-5 - still inside the 5e-6..5e-5 range TRL's LoRA DPO examples
# span, and low enough that beta=0.1 keeps the policy near the reference.
LEARNING_RATE = {"sft": 2e-4, "dpo": 2e-5, "kto": 2e-5}
# Few rows need several passes: SFT on ~30 rows learns a reply style in 4 epochs; preference
# methods move the policy further per pass, TRL's (Trainer's) default 3 is enough.
EPOCHS = {"sft": 4.0, "dpo": 3.0, "kto": 3.0}
BATCH_SIZE = 4
BETA = 0.1  # TRL's DPO and KTO default
KTO_RATIO = (1.0, 4 / 3)  # KTO docs: desirable_weight*n_desirable / (undesirable_weight*n_undes.)


@dataclass(frozen=True, slots=True)
class Choice:
    method: str
    reason: str


@dataclass(frozen=True, slots=True)
class HyperParams:
    """Everything that shapes a run; written to the adapter's card as it is."""

    method: str
    learning_rate: float
    epochs: float
    max_steps: int | None
    batch_size: int
    gradient_accumulation_steps: int
    lora_r: int
    lora_alpha: int
    lora_dropout: float = 0.05
    target_modules: str = "all-linear"
    beta: float | None = None
    desirable_weight: float | None = None
    undesirable_weight: float | None = None
    max_length: int = 1024
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0


def _have(counts: DataCounts) -> dict[str, str]:
    """Each method's data as a phrase with its minimum."""
    return {
        "dpo": f"{counts.dpo} preference pairs (DPO needs {MIN_DPO})",
        "kto": (
            f"{counts.kto} rated replies, {counts.kto_desirable} good and "
            f"{counts.kto_undesirable} bad (KTO needs {MIN_KTO} with {MIN_KTO_EACH} of each)"
        ),
        "sft": f"{counts.sft} SFT rows (SFT needs {MIN_SFT})",
    }


def enough(counts: DataCounts, method: str) -> bool:
    if method == "dpo":
        return counts.dpo >= MIN_DPO
    if method == "kto":
        return counts.kto >= MIN_KTO and min(counts.kto_desirable, counts.kto_undesirable) >= (
            MIN_KTO_EACH
        )
    return counts.sft >= MIN_SFT


def choose_method(counts: DataCounts, requested: str = "auto") -> Choice:
    """`auto`: DPO when there are enough pairs, else KTO when there are enough labels of both
    kinds, else SFT. Too little data for the method is a `TuningError` saying how much."""
    have = _have(counts)
    if requested != "auto":
        if requested not in METHODS:
            raise TuningError(f"Unknown method {requested!r}: use auto, {', '.join(METHODS)}.")
        if not enough(counts, requested):
            raise TuningError(f"Too little data for {requested.upper()}: {have[requested]}.")
        return Choice(requested, f"requested; {have[requested]}")
    tried = []
    for method in ("dpo", "kto", "sft"):
        if enough(counts, method):
            return Choice(method, "; ".join([*tried, have[method]]) + f": {method.upper()}")
        tried.append(have[method])
    raise TuningError(
        "Too little data to tune: " + "; ".join(tried) + ". Rate more replies, then export again."
    )


def kto_weights(desirable: int, undesirable: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) putting the weighted ratio of good to bad replies
    in KTO_RATIO; outside it the larger side is scaled down to the range's middle."""
    if not desirable or not undesirable:
        raise TuningError(
            f"KTO needs good and bad replies to train on; the training split has {desirable} "
            f"good and {undesirable} bad. Rate more replies or lower eval_share."
        )
    low, high = KTO_RATIO
    ratio = desirable / undesirable
    middle = (low + high) / 2
    if ratio > high:
        return round(middle / ratio, 4), 1.0
    if ratio < low:
        return 1.0, round(ratio / middle, 4)
    return 1.0, 1.0


def hyperparameters(
    method: str,
    train: SplitCounts,
    *,
    device: str = "cpu",
    bf16: bool = False,
    epochs: float | None = None,
    max_steps: int | None = None,
    lr: float | None = None,
    lora_r: int | None = None,
    seed: int = 0,
) -> HyperParams:
    """The defaults for `method` on `train`, with the caller's overrides.

    `device` is a torch device type; `bf16` whether it supports bfloat16. `max_steps`, when
    given, overrides `epochs`.
    """
    r = lora_r or 16
    weights = (None, None)
    if method == "kto":
        weights = kto_weights(train.desirable or 0, train.undesirable or 0)
    gpu = device == "cuda"
    return HyperParams(
        method=method,
        learning_rate=lr or LEARNING_RATE[method],
        epochs=epochs or EPOCHS[method],
        max_steps=max_steps,
        batch_size=BATCH_SIZE,
        # Small exports need optimizer steps more than smooth gradients: accumulate only once
        # there are enough rows for many steps (an effective batch of up to 16).
        gradient_accumulation_steps=min(4, max(1, train.rows // 64)),
        lora_r=r,
        lora_alpha=2 * r,
        beta=None if method == "sft" else BETA,
        desirable_weight=weights[0],
        undesirable_weight=weights[1],
        precision=("bf16" if bf16 else "fp16") if gpu else "fp32",
        # Checkpointing saves GPU memory for large bases; on a CPU it only costs time.
        gradient_checkpointing=gpu,
        seed=seed,
    )
