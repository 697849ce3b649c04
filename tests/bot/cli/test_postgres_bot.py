"""`muse run` on PostgreSQL: texts, 👍 votes, a server restart while it runs, then SIGKILL.

The real discord.py client against the Discord emulator, its database a `postgresql://` URL.
A vote cast while the server is down waits, is saved once the server is back and only then
acknowledged; the bot reconnects without a restart; after SIGKILL every acknowledged vote is
in the database; the password appears nowhere in the bot's log.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg

from tests.bot.bot_process import muse_run
from tests.bot.community import ephemeral, finished
from tests.discord_emulator import DiscordEmulator, InteractionRecord
from tests.postgres_server import PASSWORD, PostgresServer

PROMPT = {"prompt": "Name two colours.", "max_tokens": 16}


def read(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


async def generate(emu: DiscordEmulator, user: str) -> InteractionRecord:
    return await finished(await emu.slash_command("generate", PROMPT, user=user))


async def vote(emu: DiscordEmulator, text: InteractionRecord, button: str, user: str) -> str:
    return (await ephemeral(await emu.press_button(text.original, button, user=user))).content


async def test_muse_run_on_postgres_keeps_every_acknowledged_vote_across_a_server_restart(
    tmp_path: Path,
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database()
    votes = "SELECT generation_id, user_id, thumbs FROM feedback ORDER BY generation_id, user_id"
    bot_db = tmp_path / "muse.db"
    async with (
        DiscordEmulator() as emu,
        muse_run(emu, bot_db, MUSE_DB=url, MUSE_MAX_TOKENS="16") as bot,
    ):
        first, second = await generate(emu, "alice"), await generate(emu, "bob")
        done = read(url, "SELECT id FROM generations WHERE status = 'done' ORDER BY id")
        assert done == [(1,), (2,)]
        assert "saved" in await vote(emu, first, "muse:rate:1:up", "moderator")
        assert read(url, votes) == [(1, emu.user("moderator").id, "up")]

        # The server goes down; a vote cast meanwhile waits for it to come back.
        await asyncio.to_thread(postgres_server.stop)
        pressed = await emu.press_button(second.original, "muse:rate:2:down", user="manager")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(postgres_server.restart)
        assert "saved" in (await ephemeral(pressed)).content

        # Reconnected without a restart: a new text and another vote.
        third = await generate(emu, "manager")
        assert "saved" in await vote(emu, third, "muse:rate:3:up", "alice")
        acknowledged = read(url, votes)
        assert len(acknowledged) == 3

        bot.kill()  # SIGKILL: nothing acknowledged may be lost
        assert await bot.wait_exit() == -9
        assert PASSWORD not in bot.output()
    assert read(url, votes) == acknowledged
    assert [row[0] for row in acknowledged] == [1, 2, 3]
