"""What `muse run` acknowledged is in the file at once, whatever other processes do beside it.

The walk that lost writes before: `/generate`, a `/persona` in a second channel, more texts, a
👍, an ✏️ edit, `/forget` — with `muse export`, `muse stats` and `muse backup` run beside the
live bot and a plain `sqlite3` reader opening and closing the file between the steps. After each
acknowledgement another process reads the file and finds the write (a forgotten member's rows:
gone); the bot never holds a deleted `-wal`; after SIGKILL everything is still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from storage.maintenance import deleted_wal_holders
from tests.bot.bot_process import muse_run
from tests.bot.community import ephemeral, finished
from tests.cli_process import run_muse
from tests.discord_emulator import DiscordEmulator, InteractionRecord

PROMPT = {"prompt": "Name two colours.", "max_tokens": 16}


def read(db: Path, sql: str, *args: Any) -> list[tuple]:
    """A query from this process, through a connection it closes again (as `sqlite3` does)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, args).fetchall()


async def neighbours(db: Path, tmp_path: Path) -> None:
    """`muse export`, `muse stats` and `muse backup` run beside the bot, one after another."""
    for argv in (
        ["export", "--format", "raw", "--out", str(tmp_path / "raw.jsonl")],
        ["stats"],
        ["backup", str(tmp_path / "backup.db"), "--force"],
    ):
        done = await asyncio.to_thread(run_muse, *argv, env={"MUSE_DB": str(db)})
        assert done.returncode == 0, (argv, done.stderr)


async def generate(emu: DiscordEmulator, user: str, **where: Any) -> InteractionRecord:
    return await finished(await emu.slash_command("generate", PROMPT, user=user, **where))


def finished_ids(db: Path) -> set[int]:
    return {row[0] for row in read(db, "SELECT id FROM generations WHERE status = 'done'")}


async def test_every_acknowledged_write_is_in_the_file_beside_other_processes_and_after_sigkill(
    tmp_path: Path,
):
    db = tmp_path / "muse.db"
    async with DiscordEmulator(channels=("general", "writing")) as emu:
        async with muse_run(emu, db, MUSE_MAX_TOKENS="16") as bot:
            pid = bot.process.pid

            def healthy() -> None:
                assert deleted_wal_holders(db) == (), "the bot writes to a deleted -wal"

            # 1. Two texts, then the neighbours.
            for user in ("alice", "bob"):
                await generate(emu, user)
            assert finished_ids(db) == {1, 2}
            await neighbours(db, tmp_path)
            healthy()

            # 2. A persona in a second channel, then three texts.
            writing = emu.guild.channel("writing")
            saved = await emu.slash_command(
                "persona", {"name": "Quill", "prompt": "A poet."}, user="manager", channel=writing
            )
            assert (await ephemeral(saved)).content.startswith("✅ Saved.")
            assert read(db, "SELECT name FROM personas") == [("Quill",)]
            for user in ("alice", "bob", "alice"):
                await generate(emu, user, channel=writing)
                read(db, "SELECT 1")  # a reader opens and closes the file between them
            assert finished_ids(db) == {1, 2, 3, 4, 5}
            await neighbours(db, tmp_path)
            healthy()

            # 3. A 👍, three texts, an ✏️ edit.
            first = next(i for i in emu.interactions if i.original and "muse:rate:1:up" in
                         i.original.custom_ids())  # fmt: skip
            thanks = await ephemeral(await emu.press_button(first.original, "muse:rate:1:up",
                                                            user="moderator"))  # fmt: skip
            assert "saved" in thanks.content
            assert read(db, "SELECT generation_id, thumbs FROM feedback") == [(1, "up")]
            for user in ("moderator", "alice", "bob"):
                await generate(emu, user)
            assert finished_ids(db) == set(range(1, 9))
            shown = await emu.press_button(first.original, "muse:edit:1", user="moderator")
            await shown.wait_callback()
            edited = await finished(await emu.submit_modal(shown, {"text": "Red and blue."}))
            assert edited.original is not None
            edits = read(db, "SELECT parent_id, output FROM generations WHERE source = 'edit'")
            assert edits == [(1, "Red and blue.")]
            await neighbours(db, tmp_path)
            healthy()

            # 4. /forget, confirmed: bob's rows are gone from the file at once.
            bob, moderator = emu.user("bob").id, emu.user("moderator").id
            assert read(db, "SELECT COUNT(*) FROM generations WHERE user_id = ?", bob)[0][0] == 3
            ask = await ephemeral(await emu.slash_command("forget", user="bob"))
            confirm = await emu.press_button(ask, f"muse:forget:{bob}", user="bob")
            await confirm.wait_callback()
            await emu.wait_for(lambda: "Done" in ask.content, 15)
            assert read(db, "SELECT COUNT(*) FROM generations WHERE user_id = ?", bob) == [(0,)]
            await neighbours(db, tmp_path)
            healthy()
            kept = read(db, "SELECT id, status, output FROM generations ORDER BY id")
            votes = read(db, "SELECT generation_id, user_id, thumbs FROM feedback")

            # 5. SIGKILL: nothing acknowledged is lost.
            bot.kill()
            assert await bot.wait_exit() == -9
        assert not any(pid == holder for holder, _ in deleted_wal_holders(db))
    assert read(db, "SELECT id, status, output FROM generations ORDER BY id") == kept
    assert read(db, "SELECT generation_id, user_id, thumbs FROM feedback") == votes
    assert len(kept) == 6 and votes == [(1, moderator, "up")]
