"""The adapter's card, `muse.json`: what was trained, from what, how, and how it scored."""

from __future__ import annotations

import dataclasses
import math
import platform
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from generation.tuning.data import SplitCounts
from generation.tuning.plan import Choice, HyperParams
from generation.tuning.rules import Rules

CARD_VERSION = 1
PACKAGES = ("muse-bot", "torch", "transformers", "trl", "peft", "datasets")


def versions() -> dict[str, str | None]:
    """The versions of what trained the adapter (None: not installed as a distribution)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def build_card(
    *,
    name: str,
    base: Mapping[str, str],
    choice: Choice,
    hp: HyperParams,
    files: Mapping[str, Path | str],
    counts: Mapping[str, SplitCounts],
    before: Mapping[str, float],
    after: Mapping[str, float],
    seconds: float,
    train_seconds: float,
    rules: Rules,
    dropped: Mapping[str, int],
    contributors: int,
) -> dict[str, Any]:
    """The card; `dropped`: the rows of the trained format each data rule dropped;
    `contributors`: how many members the training rows come from (their pseudonyms are in
    the registry, not in a file that travels with the adapter)."""
    return {
        "card_version": CARD_VERSION,
        "name": name,
        "base": dict(base),
        "method": choice.method,
        "reason": choice.reason,
        "hyperparameters": dataclasses.asdict(hp),
        "data": {
            "files": {fmt: str(path) for fmt, path in files.items()},
            "counts": {split: dataclasses.asdict(c) for split, c in counts.items()},
            "rules": {
                "max_share": rules.max_share,
                "min_contributors": rules.min_contributors,
                "dropped": dict(dropped),
            },
            "contributors": contributors,
        },
        "metrics": {"before": _json_safe(before), "after": _json_safe(after)},
        "seconds": round(seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }


def _json_safe(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """NaN is not JSON: a metric that could not be computed is written as null."""
    return {k: v if math.isfinite(v) else None for k, v in metrics.items()}
