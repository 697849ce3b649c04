"""The real default model, loaded once per test run and shared by every engine test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from generation.engine import Engine, EngineConfig
from generation.models import LoadedModel, load_model
from generation.types import GenerationRequest, Message


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """The user's cache (CI: a fresh one), so the GGUF is converted at most once per machine."""
    return Path(os.environ.get("MUSE_CACHE_DIR") or Path.home() / ".cache" / "muse")


@pytest.fixture(scope="session")
def loaded(model_cache_dir: Path) -> LoadedModel:
    return load_model(None, "cpu", model_cache_dir)


@pytest.fixture
async def make_engine(loaded: LoadedModel) -> AsyncIterator[Callable[..., Engine]]:
    engines: list[Engine] = []

    def make(**kwargs) -> Engine:
        config = EngineConfig(**{k: v for k, v in kwargs.items() if k in EngineConfig.__slots__})
        extra = {k: v for k, v in kwargs.items() if k not in EngineConfig.__slots__}
        engine = Engine(lambda: loaded, config, **extra).start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.aclose()


def ask(text: str, **kwargs) -> GenerationRequest:
    kwargs.setdefault("max_new_tokens", 12)
    return GenerationRequest(messages=(Message("user", text),), **kwargs)
