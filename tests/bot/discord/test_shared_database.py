"""Two `muse run` shard processes sharing one database: the limits hold across them, and each
generation's `running` row belongs to the process that streams it (`storage.owners`), so a
restart leaves the other process's stream alone and a killed process's rows are reclaimed."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from bot.discord.recovery import RECLAIM_S
from tests.bot.bot_process import muse_run
from tests.bot.community import finished, refusal
from tests.bot.fake_openai import FakeOpenAI
from tests.discord_emulator import DiscordEmulator, Guild, InteractionRecord
from tests.polling import eventually

RESTARTED = "Muse restarted while writing this — press 🔁 to try again"


def shard_env(llm: FakeOpenAI, shard: int, **settings: str) -> dict[str, str]:
    """Shard `shard` of two, answered by the stand-in model server."""
    return {
        "MUSE_BACKEND": "openai",
        "MUSE_OPENAI_BASE_URL": llm.base_url,
        "MUSE_OPENAI_API_KEY": f"shard-{shard}",
        "MUSE_SHARDS": "2",
        "MUSE_SHARD_IDS": str(shard),
        **settings,
    }


def guild_per_shard(emu: DiscordEmulator) -> list[Guild]:
    """A guild on shard 0 and one on shard 1 (alice is a member of both)."""
    return [next(g for g in emu.guilds if (g.id >> 22) % 2 == shard) for shard in (0, 1)]


def query(db: Path, sql: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


def status(db: Path) -> list[str]:
    return [row[0] for row in query(db, "SELECT status FROM generations ORDER BY id")]


def streaming(record: InteractionRecord) -> bool:
    """The reply shows the first words with the in-progress marker."""
    original = record.original
    return original is not None and original.content.startswith("Once")


async def test_limits_hold_across_two_processes(tmp_path: Path):
    db = tmp_path / "muse.db"
    async with FakeOpenAI() as llm, DiscordEmulator(guilds=4, shards=2) as emu:
        first_guild, second_guild = guild_per_shard(emu)
        async with (
            muse_run(emu, db, **shard_env(llm, 0, MUSE_USER_PER_MINUTE="2")),
            muse_run(emu, db, **shard_env(llm, 1, MUSE_USER_PER_MINUTE="2")),
        ):
            await emu.wait_connected(sessions=2, timeout=60)
            llm.gate = asyncio.Event()
            first = await emu.slash_command("generate", {"prompt": "a"}, guild=first_guild)
            await first.wait_until(streaming, timeout=30)
            elsewhere = emu.slash_command("generate", {"prompt": "b"}, guild=second_guild)
            assert "You already have a text being written" in await refusal(await elsewhere)
            llm.gate.set()
            await finished(first)
            assert await eventually(lambda: not query(db, "SELECT * FROM slots"), 10)
            await finished(await emu.slash_command("generate", {"prompt": "c"}, guild=second_guild))
            third = emu.slash_command("generate", {"prompt": "d"}, guild=first_guild)
            assert "You can start 2 texts a minute — try again in" in await refusal(await third)
    assert status(db) == ["done", "done"]
    assert [key for key, _ in llm.requests] == ["shard-0", "shard-1"]


async def test_a_restart_leaves_the_others_stream_and_a_killed_ones_rows_are_reclaimed(
    tmp_path: Path,
):
    db = tmp_path / "muse.db"
    async with FakeOpenAI() as llm, DiscordEmulator(guilds=4, shards=2) as emu:
        first_guild, _ = guild_per_shard(emu)
        llm.gate = asyncio.Event()
        try:
            async with muse_run(emu, db, **shard_env(llm, 0)) as streamer:
                async with muse_run(emu, db, **shard_env(llm, 1)) as other:
                    await emu.wait_connected(sessions=2, timeout=60)
                    story = await emu.slash_command("generate", {"prompt": "a"}, guild=first_guild)
                    await story.wait_until(streaming, timeout=30)
                    other.kill()
                    await other.wait_exit()
                async with muse_run(emu, db, **shard_env(llm, 1)) as restarted:
                    await asyncio.sleep(RECLAIM_S + 1)  # its open, then a round of reclaiming
                    assert status(db) == ["running"], restarted.output()
                    assert RESTARTED not in story.original.content
                    assert story.original.content.startswith("Once")

                    streamer.kill()  # the other process notices once its heartbeat is gone
                    await streamer.wait_exit()
                    await story.wait_until(lambda i: RESTARTED in i.original.content, 60)
                    assert status(db) == ["interrupted"]
                    assert "instance" in restarted.output()
        finally:
            llm.gate.set()
