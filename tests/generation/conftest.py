"""The real default model, loaded once per test run and shared by every engine test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import torch

from generation.engine.local_engine import Engine, EngineConfig
from generation.model.loading import LoadedModel, describe, load_model, with_weights
from generation.types import GenerationRequest, Message
from tests.generation.random_model import random_model


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """The user's cache (CI: a fresh one), so the GGUF is converted at most once per machine."""
    return Path(os.environ.get("MUSE_CACHE_DIR") or Path.home() / ".cache" / "muse")


@pytest.fixture(scope="session")
def loaded(model_cache_dir: Path) -> LoadedModel:
    """The real default model on the CPU. MUSE_TEST_MODEL=random:<shape> runs the same tests on
    a random-weight model in fp32 on MUSE_TEST_DEVICE (e.g. cuda) with the tokenizer folder
    MUSE_TEST_TOKENIZER: how the batching tests run on a GPU machine the real weights cannot
    reach (tests/generation/random_model.py). MUSE_TEST_WEIGHTS=int8 (or int4, bf16) runs them on
    those weights (`MUSE_WEIGHTS`) instead of fp32."""
    spec = os.environ.get("MUSE_TEST_MODEL", "")
    weights = os.environ.get("MUSE_TEST_WEIGHTS") or None
    if spec.startswith("random:"):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(os.environ["MUSE_TEST_TOKENIZER"])
        device = os.environ.get("MUSE_TEST_DEVICE", "cpu")
        made = random_model(spec.removeprefix("random:"), tokenizer, device, torch.float32)
        return with_weights(made, weights)
    return load_model(None, "cpu", model_cache_dir, weights)


def logit_tolerance(loaded: LoadedModel) -> float:
    """How far a row's logits may move when other rows share its batch or its beginning was
    remembered: fp32 only reorders sums (1e-3); with bf16 arithmetic (int8 and int4 weights
    compute in it) each layer's input is rounded to bf16's 8 bits, and the logits come out in
    bf16 (0.06 apart near 12): measured up to 0.47 with int8, so 0.75."""
    if describe(loaded).startswith(("int8", "int4")):
        return 0.75
    return 1e-3 if loaded.dtype == torch.float32 else 0.75


@pytest.fixture
async def make_engine(loaded: LoadedModel) -> AsyncIterator[Callable[..., Engine]]:
    engines: list[Engine] = []

    def make(model: LoadedModel | None = None, **kwargs) -> Engine:
        """An engine over `model` (default: the shared one) with these settings."""
        config = EngineConfig(**{k: v for k, v in kwargs.items() if k in EngineConfig.__slots__})
        extra = {k: v for k, v in kwargs.items() if k not in EngineConfig.__slots__}
        served = model or loaded
        engine = Engine(lambda: served, config, **extra).start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.aclose()


def ask(text: str, **kwargs) -> GenerationRequest:
    kwargs.setdefault("max_new_tokens", 12)
    return GenerationRequest(messages=(Message("user", text),), **kwargs)
