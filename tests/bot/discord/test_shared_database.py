"""Two `muse run` processes split four shards over one database, each in a working folder of
its own (nothing shared but the database): on an SQLite file, and on a PostgreSQL URL as two
machines would. The limits hold across them, and each generation's `running` row belongs to
the process that streams it (`storage.owners`), so a restart leaves the other process's stream
alone and a killed process's rows are reclaimed.

One test per engine runs the whole story on the same processes (a start costs seconds)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from bot.discord.recovery import RECLAIM_S
from tests.bot.bot_process import BotProcess, muse_run
from tests.bot.community import finished, refusal
from tests.bot.fake_openai import FakeOpenAI
from tests.discord_emulator import DiscordEmulator, Guild, InteractionRecord
from tests.polling import eventually
from tests.postgres_server import PostgresServer
from tests.storage.peek import rows

RESTARTED = "Muse restarted while writing this — press 🔁 to try again"
SHARDS = 4
#: Which shards each process runs: an even split of four.
SPLIT = {"a": "0,1", "b": "2,3"}


def shard_env(llm: FakeOpenAI, process: str, **settings: str) -> dict[str, str]:
    """Process `process`'s half of four shards, answered by the stand-in model server (its
    API key names the process, so the requests show who answered)."""
    return {
        "MUSE_BACKEND": "openai",
        "MUSE_OPENAI_BASE_URL": llm.base_url,
        "MUSE_OPENAI_API_KEY": f"process-{process}",
        "MUSE_SHARDS": str(SHARDS),
        "MUSE_SHARD_IDS": SPLIT[process],
        "MUSE_USER_PER_MINUTE": "2",
        **settings,
    }


def guild_per_shard(emu: DiscordEmulator) -> list[Guild]:
    """A guild on each shard, in shard order (alice and bob are members of all)."""
    return [
        next(g for g in emu.guilds if (g.id >> 22) % SHARDS == shard) for shard in range(SHARDS)
    ]


def status(database: Path | str) -> list[str]:
    return [row[0] for row in rows(database, "SELECT status FROM generations ORDER BY id")]


def streaming(record: InteractionRecord) -> bool:
    """The reply shows the first words with the in-progress marker."""
    original = record.original
    return original is not None and original.content.startswith("Once")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """An SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return tmp_path / "muse.db"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


async def test_two_processes_split_four_shards_over_one_database(
    database: Path | str, tmp_path: Path
):
    homes = {name: tmp_path / f"machine-{name}" for name in SPLIT}
    async with FakeOpenAI() as llm, DiscordEmulator(guilds=8, shards=SHARDS) as emu:
        on_a, _, on_b, _ = guild_per_shard(emu)

        def start(name: str) -> contextlib.AbstractAsyncContextManager[BotProcess]:
            return muse_run(emu, database, home=homes[name], **shard_env(llm, name))

        try:
            async with start("a") as first:
                async with start("b") as second:
                    await emu.wait_connected(sessions=SHARDS, timeout=60)
                    await limits_hold_across(emu, llm, database, on_a, on_b)

                    llm.gate = asyncio.Event()
                    story = await emu.slash_command(
                        "generate", {"prompt": "e"}, user="bob", guild=on_a
                    )
                    await story.wait_until(streaming, timeout=30)
                    second.kill()
                    await second.wait_exit()
                async with start("b") as restarted:
                    await asyncio.sleep(RECLAIM_S + 1)  # its open, then a round of reclaiming
                    assert status(database)[-1] == "running", restarted.output()
                    assert RESTARTED not in story.original.content
                    assert story.original.content.startswith("Once")

                    first.kill()  # the other process notices once its heartbeat is gone
                    await first.wait_exit()
                    await story.wait_until(lambda i: RESTARTED in i.original.content, 60)
                    assert status(database) == ["done", "done", "interrupted"]
                    assert "instance" in restarted.output()
        finally:
            llm.gate.set()
    assert [key for key, _ in llm.requests] == ["process-a", "process-b", "process-a"]
    assert all(list(home.iterdir()) for home in homes.values())  # each logged in its own


async def limits_hold_across(
    emu: DiscordEmulator, llm: FakeOpenAI, database: Path | str, on_a: Guild, on_b: Guild
) -> None:
    """alice, served by both processes, has one running text and two a minute in all."""
    llm.gate = asyncio.Event()
    first = await emu.slash_command("generate", {"prompt": "a"}, guild=on_a)
    await first.wait_until(streaming, timeout=30)
    elsewhere = emu.slash_command("generate", {"prompt": "b"}, guild=on_b)
    assert "You already have a text being written" in await refusal(await elsewhere)
    llm.gate.set()
    await finished(first)
    assert await eventually(lambda: not rows(database, "SELECT * FROM slots"), 10)
    await finished(await emu.slash_command("generate", {"prompt": "c"}, guild=on_b))
    third = emu.slash_command("generate", {"prompt": "d"}, guild=on_a)
    assert "You can start 2 texts a minute — try again in" in await refusal(await third)
    assert status(database) == ["done", "done"]
