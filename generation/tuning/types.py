"""The tuning API's values: what a run is asked, what it reports and what it returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generation.tuning.data import SplitCounts
from generation.tuning.rules import Rules


@dataclass(frozen=True, slots=True, kw_only=True)
class TuneConfig:
    """One tuning run. `files` maps export formats (sft, dpo, kto) to JSONL paths; `base` is a
    model name, folder or .gguf (None: the bundled default, via its converted cache folder);
    None for epochs, lr and lora_r means the method's default (`plan.py`); `rules`: the
    training data rules (`rules.py`), applied before the method is chosen."""

    name: str
    files: Mapping[str, Path | str]
    adapters_dir: Path
    method: str = "auto"
    base: str | None = None
    epochs: float | None = None
    max_steps: int | None = None
    lr: float | None = None
    lora_r: int | None = None
    eval_share: float = 0.1
    seed: int = 0
    force: bool = False
    device: str = "auto"
    cache_dir: Path | None = None
    rules: Rules = field(default_factory=Rules)


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """A step of the run. `phase`: load, evaluate, train or save; `step`/`total` count
    optimizer steps while training (0/0 otherwise); `loss` is the step's training loss."""

    phase: str
    step: int = 0
    total: int = 0
    loss: float | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class TuneResult:
    """A written adapter: where, how it was trained and what the held-out split says;
    `contributors`: the pseudonyms of the members whose rows it was trained on; `dropped`:
    how many of the chosen format's rows each data rule dropped."""

    path: Path
    method: str
    reason: str
    counts: dict[str, SplitCounts]
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]
    seconds: float
    card: dict[str, Any] = field(default_factory=dict)
    contributors: tuple[str, ...] = ()
    dropped: dict[str, int] = field(default_factory=dict)
