"""The limits the database decides (`bot.core.shared_limits`): two applications on one store
stand for two processes, each with its own in-process count."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.core.app import Muse
from bot.core.limits import Limited
from bot.core.settings import Settings
from bot.core.shared_limits import share
from storage.store import Store
from tests.bot.fakes import ReplayEngine


async def start(app: Muse, user_id: int, guild_id: int, per_minute: int = 2):
    slot = app.limits.acquire(user_id, guild_id, per_minute)
    await share(app, slot, per_minute)
    return slot


async def test_two_processes_share_one_allowance_and_a_refusal_counts_nothing(tmp_path: Path):
    async with Store.open(tmp_path / "muse.db") as store:
        settings = Settings(guild_concurrency=1)
        a, b = (
            Muse(settings=settings, store=store, engine=ReplayEngine(), presets={}) for _ in "ab"
        )
        running = await start(a, 1, 10)
        with pytest.raises(Limited, match="You already have a text being written"):
            await start(b, 1, 11)
        assert not b.limits._running_users and not b.limits._starts.get(1)  # withdrawn
        running.release()
        (await start(b, 1, 11)).release()
        with pytest.raises(Limited, match="You can start 2 texts a minute — try again in"):
            await start(b, 1, 11)
        assert len(b.limits._starts[1]) == 1  # only the start that happened in b

        await start(a, 5, 20)
        with pytest.raises(Limited, match="This server already has 1 texts being written"):
            await start(b, 6, 20)


async def test_a_database_that_cannot_be_written_leaves_the_count_to_the_process(tmp_path: Path):
    async with Store.open(tmp_path / "muse.db") as store:
        app = Muse(settings=Settings(), store=store, engine=ReplayEngine(), presets={})
        await store._write(lambda conn: conn.execute("PRAGMA query_only = ON"))
        running = await start(app, 1, 10)  # answered (unsaved), not failed
        with pytest.raises(Limited, match="You already have a text being written"):
            await start(app, 1, 10)
        running.release()
