"""A tuning run in its own process, for the test that SIGKILLs one mid-training.

    python -m tests.generation.tuning.tuning_child SFT_FILE ADAPTERS_DIR NAME [CACHE_DIR [BASE]]

Prints `step N` (flushed) after each training step.
"""

from __future__ import annotations

import sys
from pathlib import Path

from generation.tuning import ProgressEvent, TuneConfig, tune


def report(event: ProgressEvent) -> None:
    if event.phase == "train":
        print(f"step {event.step}", flush=True)


def main(argv: list[str]) -> None:
    sft, adapters, name, *rest = argv
    cache, base = (rest + [None, None])[:2]
    config = TuneConfig(
        name=name,
        files={"sft": Path(sft)},
        adapters_dir=Path(adapters),
        method="sft",
        max_steps=200,  # far more than the test waits for
        eval_share=0,
        device="cpu",
        cache_dir=Path(cache) if cache else None,
        base=base,
    )
    tune(config, progress=report)


if __name__ == "__main__":
    main(sys.argv[1:])
