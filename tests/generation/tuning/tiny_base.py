"""A tiny random Llama with the default model's tokenizer, saved as a local folder: a base for
the tuning tests that check plumbing (methods, metrics, folders, stopping), not learning.

Two layers of width 64 train a step in a fraction of a second where the real 135M base takes
seconds; the one test that checks learning (`test_default_sft_teaches_the_marker`) keeps the
real base."""

from __future__ import annotations

from pathlib import Path

import torch

from generation.model.loading import load_model
from generation.tuning.train import default_base_path


def save_tiny_base(folder: Path, cache_dir: Path) -> Path:
    """Write the tiny model and the real tokenizer (and its chat template) into `folder`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    real = default_base_path(cache_dir)
    if not real.is_dir():
        load_model(None, "cpu", cache_dir)  # converts the bundled GGUF once
    tokenizer = AutoTokenizer.from_pretrained(str(real))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
