"""A tiny random Llama with the default model's tokenizer, saved as a local folder: a base for
the tuning tests that check plumbing (methods, metrics, folders, stopping), not learning.

Two layers of width 64 (`random_model`'s "tiny" shape) train a step in a fraction of a second
where the real 135M base takes seconds; the one test that checks learning
(`test_default_sft_teaches_the_marker`) keeps the real base."""

from __future__ import annotations

from pathlib import Path

import torch

from generation.model.loading import load_model
from generation.model.random_model import random_model
from generation.tuning.train import default_base_path


def save_tiny_base(folder: Path, cache_dir: Path) -> Path:
    """Write the tiny model and the real tokenizer (and its chat template) into `folder`."""
    from transformers import AutoTokenizer

    real = default_base_path(cache_dir)
    if not real.is_dir():
        load_model(None, "cpu", cache_dir)  # converts the bundled GGUF once
    tokenizer = AutoTokenizer.from_pretrained(str(real))
    random_model("tiny", tokenizer, "cpu", torch.float32).model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
