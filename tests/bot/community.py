"""Helpers for the community tests: a MuseBot with chosen settings, waiting for answers."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from bot.cli.wiring import presets_from
from bot.discord.client import MuseBot
from storage.store import Store
from tests.bot.helpers import make_settings
from tests.discord_emulator import DiscordEmulator, InteractionRecord, MessageRecord, run_bot


@contextlib.asynccontextmanager
async def muse(
    emu: DiscordEmulator,
    db: Path,
    engine: Any,
    loop_command: Sequence[str] | None = None,
    **changes: Any,
) -> AsyncIterator[MuseBot]:
    """A MuseBot on `db` with settings `changes` (max_tokens 512 unless given), edits fast;
    with `loop_command`, the learning loop runs and tunes with that command."""
    settings = make_settings(emu, db, **({"max_tokens": 512} | changes))
    async with Store.open(settings.db_path) as store:
        bot = MuseBot(
            settings=settings,
            store=store,
            engine=engine,
            presets=presets_from(settings),
            loop_command=loop_command,
        )
        bot.app.edit_interval_s = 0.05
        async with run_bot(bot, emu):
            yield bot


def rows(db: Path, sql: str, *args: Any) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


async def finished(record: InteractionRecord, marker: str = "muse:rate:") -> InteractionRecord:
    """Wait until the reply carries its finished buttons and the handler is done."""
    await record.wait_until(
        lambda i: i.original is not None and any(marker in c for c in i.original.custom_ids()),
        timeout=30,
    )
    return await record.wait_finished(timeout=30)


async def ephemeral(record: InteractionRecord) -> MessageRecord:
    """The first ephemeral message answering `record`."""
    await record.wait_until(lambda i: any(m.ephemeral for m in i.messages), timeout=15)
    return next(m for m in record.messages if m.ephemeral)


async def refusal(record: InteractionRecord) -> str:
    """An immediate (not deferred) ephemeral answer's text."""
    message = await ephemeral(record)
    assert record.callback_type == 4 and message is record.original
    return message.content


async def answered(record: InteractionRecord) -> MessageRecord:
    """The deferred original response once it holds the answer ("thinking…" replaced)."""
    await record.wait_until(lambda i: i.original is not None and not i.original.loading, 30)
    assert record.original is not None
    return record.original


async def bot_reply_in(emu: DiscordEmulator, thread, count: int = 1):
    """The bot's `count`-th finished message in a thread."""
    done = lambda: [  # noqa: E731
        m for m in emu.bot_messages(thread) if any("muse:rate:" in c for c in m.custom_ids())
    ]
    return (await emu.wait_for(lambda: len(done()) >= count and done(), timeout=30))[count - 1]


async def arena_reply(battle: InteractionRecord, timeout_s: float = 120) -> MessageRecord:
    """The arena's reply once its vote buttons are on and the handler is done."""
    try:
        await battle.wait_until(
            lambda i: (
                i.original is not None
                and any(c.startswith("muse:arena:") for c in i.original.custom_ids())
            ),
            timeout=timeout_s,
        )
    except TimeoutError as exc:
        shown = [(m.content[:200], m.ephemeral) for m in battle.messages]
        raise AssertionError(f"the arena never showed its votes; it showed {shown}") from exc
    await battle.wait_finished(timeout=timeout_s)
    assert battle.original is not None
    return battle.original


async def vote_final(
    emu: DiscordEmulator, reply: MessageRecord, side: str, voters: Sequence[str]
) -> None:
    """Each voter picks `side` ("A" or "B") of a battle and is thanked; a second press by the
    first voter is refused as final."""
    custom = next(c for c in reply.custom_ids() if c.endswith(f":{side}"))
    for voter in voters:
        said = (await ephemeral(await emu.press_button(reply, custom, user=voter))).content
        assert said.startswith("Thanks — saved"), said
    again = (await ephemeral(await emu.press_button(reply, custom, user=voters[0]))).content
    assert again.startswith("🔒 Your vote on this battle is final"), again


def announced(emu: DiscordEmulator, text: str) -> bool:
    """Whether the bot said `text` in the emulator's channel."""
    return any(text in m.content for m in emu.bot_messages(emu.channel))
