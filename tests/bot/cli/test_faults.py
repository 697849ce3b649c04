"""Faults: a killed or stopped process, a dropped gateway, an expired token, a failing or hung
model, a database that cannot be written. The real default model, the emulator, real SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from bot.cli.fault_injection import make_hook
from bot.cli.wiring import EXIT_ENGINE_DEAD, presets_from
from bot.discord.client import MuseBot
from generation.engine.local_engine import Engine, EngineConfig
from generation.model.loading import LoadedModel
from generation.types import GenerationRequest
from storage.store import Store
from tests.bot.bot_process import muse_run
from tests.bot.helpers import make_settings
from tests.discord_emulator import DiscordEmulator, InteractionRecord, MessageRecord, run_bot

RESTARTED = "Muse restarted while writing this — press 🔁 to try again"
RESTARTING = "Muse is restarting — try again in a minute."
LONG = {"prompt": "Write a long story about a dragon who learns to bake bread.", "max_tokens": 1024}
SHORT = {"prompt": "Name two colours.", "max_tokens": 16}


def rows(db: Path, sql: str, *args: Any) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, args).fetchall()


def wal_left(db: Path) -> bool:
    return Path(f"{db}-wal").exists()


def status_of(db: Path) -> dict[int, str]:
    return dict(rows(db, "SELECT id, status FROM generations"))


def footed(record: InteractionRecord) -> bool:
    """The reply shows its final footer."""
    return record.original is not None and "AI-generated" in record.original.content


def has_buttons(record: InteractionRecord, marker: str = "muse:rate:") -> bool:
    return record.original is not None and any(marker in c for c in record.original.custom_ids())


def streaming(record: InteractionRecord) -> bool:
    """The reply shows some generated text with the in-progress marker."""
    original = record.original
    return (
        original is not None
        and original.content.endswith("▌")
        and not original.content.startswith("⏳")
    )


async def reply_text(record: InteractionRecord, timeout: float = 60) -> str:  # noqa: ASYNC109
    """The first answer the user sees (the reply, or an ephemeral message)."""
    await record.wait_until(
        lambda i: (i.original is not None and not i.original.loading) or i.followups, timeout
    )
    return (record.original or record.followups[0]).content


async def failure_text(record: InteractionRecord, timeout: float = 60) -> str:  # noqa: ASYNC109
    """The reply once it says what went wrong."""
    await record.wait_until(lambda i: i.original is not None and "⚠️" in i.original.content, timeout)
    return record.original.content


# --- the process: SIGKILL, SIGTERM, the watchdog ---------------------------------------------


async def test_sigkill_mid_stream_then_restart_keeps_what_was_saved(
    emu: DiscordEmulator, tmp_path: Path
):
    db = tmp_path / "muse.db"
    for name in ("u1", "u2"):
        emu.add_user(name)
    # Slowed steps: both long replies are still streaming when the process is killed.
    async with muse_run(emu, db, MUSE_MAX_TOKENS="200", MUSE_TEST_FAULT="slow:decode") as bot:
        short = await emu.slash_command("generate", SHORT, user="alice")
        await short.wait_until(has_buttons, 60)
        votes = [
            await emu.press_button(short.original, "muse:rate:1:up", user="bob"),
            await emu.press_button(short.original, "muse:rate:1:down", user="manager"),
        ]
        for vote in votes:
            assert (await reply_text(vote)).startswith("Thanks — saved")
        long = [await emu.slash_command("generate", LONG, user=u) for u in ("u1", "u2")]
        for record in long:
            await record.wait_until(streaming, 60)
        bot.kill()
        assert await bot.wait_exit() == -9
    assert all(not has_buttons(r) for r in long)  # really cut off mid-stream
    feedback = rows(db, "SELECT user_id, thumbs FROM feedback ORDER BY user_id")
    assert sorted(feedback) == sorted(
        [(emu.user("bob").id, "up"), (emu.user("manager").id, "down")]
    )
    assert status_of(db) == {1: "done", 2: "running", 3: "running"}

    async with muse_run(emu, db) as bot:
        for record in long:
            await record.wait_until(lambda i: RESTARTED in i.original.content, 30)
            assert any(c.startswith("muse:regen:") for c in record.original.custom_ids())
            assert record.original.content.split("\n")[0].strip()  # the partial text is kept
        assert status_of(db) == {1: "done", 2: "interrupted", 3: "interrupted"}
        bot.terminate()
        assert await bot.wait_exit() == 0
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert len(rows(db, "SELECT * FROM feedback")) == 2


async def test_sigterm_finishes_or_cuts_off_then_exits_0(emu: DiscordEmulator, tmp_path: Path):
    db = tmp_path / "muse.db"
    for name in ("u1", "u2", "u3"):
        emu.add_user(name)
    # The long ones must outlast the grace on any machine: on a fast one the story once reached
    # its end of text inside 3 s, so every step is slowed (16 short tokens still take ~1 s).
    slow = {"MUSE_TEST_FAULT": "slow:decode"}
    async with muse_run(emu, db, MUSE_MAX_TOKENS="1024", MUSE_SHUTDOWN_GRACE_S="3", **slow) as bot:
        long = [await emu.slash_command("generate", LONG, user=u) for u in ("u1", "u2")]
        for record in long:
            await record.wait_until(streaming, 60)
        short = await emu.slash_command("generate", SHORT, user="alice")
        await short.wait_callback()
        bot.terminate()
        await emu.wait_for(lambda: "shutting down" in bot.output(), 10)
        late = await emu.slash_command("generate", SHORT, user="u3")
        assert await reply_text(late) == RESTARTING and late.original.ephemeral
        assert await bot.wait_exit(40) == 0
    assert has_buttons(short) and "AI-generated" in short.original.content
    for record in long:
        assert RESTARTED in record.original.content
        assert any(c.startswith("muse:regen:") for c in record.original.custom_ids())
    statuses = status_of(db)
    assert sorted(statuses.values()) == ["done", "interrupted", "interrupted"]
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert not wal_left(db)  # closed cleanly: the WAL was checkpointed away


async def test_a_hung_step_trips_the_watchdog_and_exits_70(emu: DiscordEmulator, tmp_path: Path):
    db = tmp_path / "muse.db"
    async with muse_run(emu, db, MUSE_TEST_FAULT="hang:decode:2", MUSE_TIMEOUT_S="2") as bot:
        # The request's own 2 s would run out while the model loads: wait for it first.
        await emu.wait_for(lambda: "muse.generation.model.loading: loaded" in bot.output(), 60)
        await emu.slash_command("generate", SHORT, user="alice")
        assert await bot.wait_exit(60) == EXIT_ENGINE_DEAD
        assert "engine watchdog: a model step hung" in bot.output()
    assert status_of(db) == {1: "running"}  # the next start marks it interrupted


# --- in process: model faults, Discord faults, storage faults --------------------------------

FaultHook = Callable[[str, list[GenerationRequest]], None]


def prompt_has(requests: list[GenerationRequest], word: str) -> bool:
    return any(word in m.content for r in requests for m in r.messages)


@pytest.fixture
def start(emu: DiscordEmulator, tmp_path: Path, loaded_model: LoadedModel):
    """`async with start(hook, **settings) as bot:` a bot on its own engine with `hook`."""

    @contextlib.asynccontextmanager
    async def starter(hook: FaultHook | None = None, **changes: Any) -> AsyncIterator[MuseBot]:
        settings = make_settings(emu, tmp_path / "muse.db", **changes)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # on a busy 2-core machine two threads run ~6x slower
        config = EngineConfig(max_new_tokens=settings.max_tokens, step_timeout_s=600)
        engine = Engine(lambda: loaded_model, config, fault_hook=hook).start()
        await engine.wait_ready()
        try:
            async with Store.open(settings.db_path) as store:
                bot = MuseBot(
                    settings=settings, store=store, engine=engine, presets=presets_from(settings)
                )
                bot.app.edit_interval_s = 0.3
                async with run_bot(bot, emu):
                    yield bot
        finally:
            await engine.aclose()
            torch.set_num_threads(threads)

    return starter


async def test_model_errors_out_of_memory_and_timeouts_fail_only_their_requests(
    start, emu: DiscordEmulator, tmp_path: Path
):
    def hook(phase: str, requests: list[GenerationRequest]) -> None:
        if phase == "prefill" and prompt_has(requests, "EXPLODE"):
            raise RuntimeError("injected model failure")
        if phase == "prefill" and prompt_has(requests, "MEMORY"):
            raise torch.OutOfMemoryError("injected out of memory")
        if phase == "decode" and prompt_has(requests, "SLOW"):
            time.sleep(0.5)

    async with start(hook, max_tokens=96) as bot:
        healthy = await emu.slash_command("generate", LONG, user="alice")
        await healthy.wait_until(streaming, 30)
        broken = await emu.slash_command("generate", {"prompt": "EXPLODE"}, user="bob")
        assert "The model failed while writing this" in await failure_text(broken)
        memory = await emu.slash_command("generate", {"prompt": "MEMORY"}, user="manager")
        assert "ran out of memory" in await failure_text(memory)
        await healthy.wait_until(has_buttons, 60)
        assert "AI-generated" in healthy.original.content
        settings = bot.app.settings
        bot.app.settings = replace(settings, timeout_s=2.0)  # for the next request only
        slow = await emu.slash_command("generate", {"prompt": "SLOW"}, user="moderator")
        await slow.wait_callback()
        await asyncio.sleep(0.5)
        bot.app.settings = settings
        await slow.wait_until(has_buttons, 30)
        assert "⌛ Timed out." in slow.original.content
        after = await emu.slash_command("generate", SHORT, user="bob")
        await after.wait_until(has_buttons, 30)
    db = tmp_path / "muse.db"
    reasons = rows(db, "SELECT status, finish_reason FROM generations ORDER BY id")
    assert reasons[:4] == [
        ("done", "length"),
        ("failed", "error"),
        ("failed", "error"),
        ("failed", "timeout"),
    ]
    assert reasons[4] in (("done", "stop"), ("done", "length"))


async def test_gateway_drop_resumes_and_an_expired_token_falls_back_to_the_channel(
    start, emu: DiscordEmulator, tmp_path: Path
):
    # Slowed steps: the second reply must still be streaming when its token expires.
    async with start(make_hook("slow", "decode"), max_tokens=64):
        first = await emu.slash_command("generate", LONG, user="alice")
        await first.wait_until(streaming, 30)
        assert await emu.drop_gateway() == 1
        await first.wait_until(has_buttons, 60)
        assert "AI-generated" in first.original.content
        await emu.wait_for(lambda: emu.gateway.count("resumed") >= 1, 15)

        second = await emu.slash_command("generate", LONG, user="bob")  # after the resume
        await second.wait_until(streaming, 30)
        second.expire()

        def posted() -> MessageRecord | None:
            return next(
                (
                    m
                    for m in emu.bot_messages()
                    if m.kind == "channel" and "AI-generated" in m.content
                ),
                None,
            )

        fallback = await emu.wait_for(posted, 60)
        assert any(c.startswith("muse:rate:2:") for c in fallback.custom_ids())
        assert not has_buttons(second)
    db = tmp_path / "muse.db"
    assert rows(db, "SELECT id, status, message_id FROM generations ORDER BY id") == [
        (1, "done", first.original.id),
        (2, "done", fallback.id),
    ]


def pragma(sql: str) -> Callable[[sqlite3.Connection], Any]:
    """A write operation for the store's writer thread (its connection is private)."""
    return lambda conn: conn.execute(sql).fetchall()


async def test_a_read_only_database_still_answers_and_says_not_saved(
    start, emu: DiscordEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.ERROR, "muse")
    async with start(max_tokens=24) as bot:
        saved = await emu.slash_command("generate", SHORT, user="bob")
        await saved.wait_until(has_buttons, 60)
        await bot.app.store._write(pragma("PRAGMA query_only = ON"))
        for user in ("alice", "manager"):  # every request answers: no crash, no loop
            ro = await emu.slash_command("generate", SHORT, user=user)
            await ro.wait_until(footed, 60)
            assert "Not saved (the database is read-only)" in ro.original.content
            assert not has_buttons(ro, "muse:")  # nothing to rate: there is no row
        assert any("read-only" in r.getMessage() for r in caplog.records)
        vote = await emu.press_button(saved.original, "muse:rate:1:up", user="alice")
        assert "Thanks — saved" not in await reply_text(vote)  # never claims a lost vote
    assert rows(tmp_path / "muse.db", "SELECT count(*) FROM generations") == [(1,)]


async def test_a_full_database_still_answers_says_not_saved_and_heals(
    start, emu: DiscordEmulator, tmp_path: Path
):
    async with start(max_tokens=24) as bot:
        pages = (await bot.app.store._write(pragma("PRAGMA page_count")))[0][0]
        await bot.app.store._write(pragma(f"PRAGMA max_page_count = {pages}"))
        big = {"prompt": "Describe this scene. " + "A quiet harbour at dawn. " * 38}
        full: list[InteractionRecord] = []
        for user in ("alice", "bob", "manager", "moderator"):
            record = await emu.slash_command("generate", big, user=user)
            await record.wait_until(footed, 60)  # the text is always shown
            full.append(record)
            if "Not saved (the database is full)" in record.original.content:
                break
        assert "Not saved (the database is full)" in full[-1].original.content
        await bot.app.store._write(pragma("PRAGMA max_page_count = 1073741823"))
        healed = await emu.slash_command("generate", SHORT, user="owner")
        await healed.wait_until(has_buttons, 60)  # saved again, without a restart
        assert "Not saved" not in healed.original.content
    db = tmp_path / "muse.db"
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert rows(db, "SELECT status FROM generations ORDER BY id DESC LIMIT 1") == [("done",)]
