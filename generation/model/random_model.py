"""Random-weight models in real models' shapes, for machines the real weights cannot reach:
the GPU checks and benchmarks (`benchmarks/gpu.py`, `gpu_serve.py`, `peers.py --big`) and the
tests (`MUSE_TEST_MODEL=random:SHAPE`, the tuning tests' tiny base).

The GPU machine gets no download and at most 64 MB of our files, less than the default GGUF, so
its checks run on models built from a config: SmolLM2-135M's shape (the default model), and
larger bodies with SmolLM2's vocabulary (so the real tokenizer still decodes every id). The
final norm is scaled so the logits spread like a trained model's (a few peaked tokens) rather
than the near-uniform scores of a fresh initialisation, which would make every step take the
sampler's rare full-sort path and greedy choices hinge on rounding.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from generation.model.loading import LoadedModel

SMOLLM2_VOCAB = 49152
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
        rope_theta=100000.0,
    ),
    "smollm2-1.7b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=24,
        num_attention_heads=32,
        num_key_value_heads=32,
        tie_word_embeddings=True,
        rope_theta=130000.0,
    ),
    "llama3-8b-body": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=False,
        rope_theta=500000.0,
    ),
    "tiny": dict(  # for checking the scripts themselves on a CPU
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        rope_theta=10000.0,
    ),
}
LOGIT_SPREAD = 4.0  # standard deviation of the logits the scaled final norm aims at


def random_model(
    shape: str, tokenizer: Any, device: str | torch.device, dtype: torch.dtype, seed: int = 0
) -> LoadedModel:
    """A `LoadedModel` of shape `shape` with seeded random weights, built on `device`."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    started = time.perf_counter()
    device = torch.device(device)
    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=SMOLLM2_VOCAB,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[shape],
    )
    torch.manual_seed(seed)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        spread = config.initializer_range * config.hidden_size**0.5
        model.model.norm.weight.fill_(LOGIT_SPREAD / spread)
    model.generation_config.eos_token_id = eos
    model.eval()
    return LoadedModel(
        model,
        tokenizer,
        f"random:{shape}",
        "",
        device,
        dtype,
        time.perf_counter() - started,
        False,
    )


def parameters(loaded: LoadedModel) -> int:
    return sum(p.numel() for p in loaded.model.parameters())
