"""`muse run` with MUSE_ENGINE_PROCESS=1: the engine runs in a `muse serve` child, the bot talks
to it over loopback HTTP, and the bot's commands work as in-process (the real model)."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

from tests.bot.bot_process import muse_run
from tests.bot.community import ephemeral, finished
from tests.discord_emulator import DiscordEmulator


async def test_bot_commands_through_a_child_engine(emu: DiscordEmulator, tmp_path: Path):
    db = tmp_path / "muse.db"
    env = {"MUSE_ENGINE_PROCESS": "1", "MUSE_MAX_TOKENS": "12", "MUSE_SHUTDOWN_GRACE_S": "2"}
    async with muse_run(emu, db, ready_timeout_s=180, **env) as bot:
        story = await finished(await emu.slash_command("story", {"prompt": "a fox"}), "muse:rate:1")
        assert re.search(r"-# \S+ · \d+ tokens", story.original.content)
        vote = await emu.press_button(story.original, "muse:rate:1:up", user="bob")
        assert (await ephemeral(vote)).content == "Thanks — saved 👍"
        both = await emu.slash_command("compare", {"prompt": "the sea"}, user="bob")
        await both.wait_until(
            lambda i: (
                i.original is not None and "muse:compare:" in " ".join(i.original.custom_ids())
            ),
            timeout=120,
        )
        child = re.search(r"engine process \(pid (\d+)\)", bot.output())
        bot.terminate()
        assert await bot.wait_exit(60) == 0
    with sqlite3.connect(db) as conn:
        statuses = [s for (s,) in conn.execute("SELECT status FROM generations ORDER BY id")]
    assert statuses == ["done", "done", "done"]
    assert child is not None, bot.output()[-2000:]
    assert not os.path.exists(f"/proc/{child[1]}")  # the child is gone with its parent  # noqa: ASYNC240
