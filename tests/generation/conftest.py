"""The real default model, loaded once per test run and shared by every engine test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import torch

from generation.engine.local_engine import Engine, EngineConfig
from generation.model.agreement import greedy_text
from generation.model.loading import LoadedModel, load_model, with_weights
from generation.model.random_model import random_model


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """The user's cache (CI: a fresh one), so the GGUF is converted at most once per machine."""
    return Path(os.environ.get("MUSE_CACHE_DIR") or Path.home() / ".cache" / "muse")


@pytest.fixture(scope="session")
def fp32(model_cache_dir: Path) -> Iterator[LoadedModel]:
    """The exact weights, whatever MUSE_TEST_WEIGHTS gives the session's model: loaded once for
    every test that compares against fp32 (the written-out step, the quantised layers, the C++
    step)."""
    yield load_model(None, "cpu", model_cache_dir, "fp32")
    greedy_text.cache_clear()  # it holds the fp32 model


@pytest.fixture(scope="session", params=["int8", "int4"])
def quantised(request: pytest.FixtureRequest, fp32: LoadedModel) -> LoadedModel:
    """One quantised copy of `fp32` at a time, shared by every module that tests int weights
    (pytest runs all of one kind's tests, then the other's)."""
    return with_weights(fp32, request.param, copy=True)


@pytest.fixture(scope="session")
def loaded(model_cache_dir: Path) -> LoadedModel:
    """The real default model on the CPU. MUSE_TEST_MODEL=random:<shape> runs the same tests on
    a random-weight model in fp32 on MUSE_TEST_DEVICE (e.g. cuda) with the tokenizer folder
    MUSE_TEST_TOKENIZER: how the batching tests run on a GPU machine the real weights cannot
    reach (generation/model/random_model.py). MUSE_TEST_WEIGHTS=int8 (or int4, bf16) runs them on
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
