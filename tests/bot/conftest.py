"""Bot test fixtures: the real default model (loaded once), the emulator, a MuseBot factory.

With `MUSE_TEST_ENGINE_PROCESS=1` (`make test-engine-process`) the shared engine is `muse serve`
in a child process, talked to over loopback HTTP by the OpenAI backend: what `muse run` does with
`MUSE_ENGINE_PROCESS=1`, so the bot suite runs against that path too."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.cli.engine_process import engine_process
from bot.cli.wiring import presets_from
from bot.core.settings import Settings
from bot.discord.client import MuseBot
from generation.backend import Backend
from generation.engine.local_engine import Engine, EngineConfig
from generation.model.loading import LoadedModel, load_model
from storage.store import Store
from tests.bot.helpers import MAX_TOKENS, BotFactory, cache_dir, make_settings
from tests.discord_emulator import DiscordEmulator, run_bot


@pytest.fixture(scope="session")
def loaded_model() -> LoadedModel:
    return load_model(None, "cpu", cache_dir())


IN_CHILD = os.environ.get("MUSE_TEST_ENGINE_PROCESS") == "1"


@pytest.fixture(scope="session")
async def engine(loaded_model: LoadedModel) -> AsyncIterator[Backend]:
    """One real engine shared by the bot tests (small token cap): in this process, or in a
    `muse serve` child with MUSE_TEST_ENGINE_PROCESS=1."""
    if IN_CHILD:
        settings = Settings(device="cpu", cache_dir=cache_dir(), max_tokens=MAX_TOKENS)
        async with engine_process(settings) as remote:
            yield remote
        return
    real = Engine(lambda: loaded_model, EngineConfig(max_new_tokens=MAX_TOKENS)).start()
    await real.wait_ready()
    yield real
    await real.aclose()


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator() as emulator:
        yield emulator


@pytest.fixture
def start_bot(emu: DiscordEmulator, tmp_path: Path) -> BotFactory:
    """`async with start_bot(engine) as bot:` a MuseBot on a real SQLite file in tmp_path."""

    @contextlib.asynccontextmanager
    async def start(engine: Any, edit_interval_s: float | None = None) -> AsyncIterator[MuseBot]:
        settings = make_settings(emu, tmp_path / "muse.db")
        async with Store.open(settings.db_path) as store:
            bot = MuseBot(
                settings=settings, store=store, engine=engine, presets=presets_from(settings)
            )
            if edit_interval_s is not None:
                bot.app.edit_interval_s = edit_interval_s
            async with run_bot(bot, emu):
                yield bot

    return start
