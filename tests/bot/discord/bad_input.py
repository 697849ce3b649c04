"""Helpers for the bad-input tests: one emulator + bot for many drawn examples, hostile text,
and the checks every answer must pass (no crash, nothing left "thinking…", pings no one,
Discord's size limits, a consistent database)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from bot.discord.client import MuseBot
from tests.bot.community import muse
from tests.bot.fakes import ReplayEngine
from tests.discord_emulator import DiscordEmulator, InteractionRecord, MessageRecord

#: Text no one should have to think of twice: empty, blank, huge, control characters and NUL,
#: right-to-left and combining marks, zero-width characters, mentions, markdown, code fences.
NASTY = (
    "",
    " ",
    " \t\n \u3000",
    "a" * 6000,
    "x " * 3000,
    "\x00",
    "nul\x00in the middle",
    "\x01\x02\x07\x08\x1b[2J\x7f\x9b",
    "\u202eevil right-to-left\u202c and back",
    "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd",
    "e\u0301\u0302\u0303\u0304\u0305\u0306",
    "Z\u0351\u0352\u0357\u0358" * 40,
    "\u200b",
    "\u200b\u200c\u200d\u2060\ufeff",
    "@everyone",
    "@here hello",
    "<@&123>",
    "<@456> <@!456>",
    "<#789>",
    "**bold** __under__ ~~strike~~ ||spoiler|| > quote",
    "```py\nprint('hi')\n```",
    "```",
    "`",
    "[click](https://evil.example)",
    "{prompt} {0} {{x}} %s %(name)s",
    "'; DROP TABLE generations; --",
    "# heading\n- item\n\n\n",
    "\n" * 40,
    "🐉" * 300,
)

NOT_NUMBERS = ("abc", "", "1,5", "0x10", "١٢")
MENTIONS = ("@everyone", "@here", "<@&123>", "<@456>")
GENERIC_FAILURE = "Something went wrong"
# Discord's limits: message content, embed description, and all embeds of a message together.
CONTENT_LIMIT, DESCRIPTION_LIMIT, EMBEDS_LIMIT = 2000, 4096, 6000
# A masked link Discord would render with its target hidden.
MASKED_LINK = re.compile(r"\]\(\s*<?\s*https?://", re.IGNORECASE)


def texts(max_size: int = 60) -> st.SearchStrategy[str]:
    """Hostile strings, random Unicode (no surrogates: Discord sends UTF-8), and mixtures."""
    return st.one_of(
        st.sampled_from(NASTY),
        st.text(max_size=max_size),
        st.lists(st.sampled_from(NASTY), min_size=2, max_size=4).map("".join),
    )


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Left out (None) or a value."""
    return st.one_of(st.none(), strategy)


def choices(*valid: str) -> st.SearchStrategy[str | None]:
    """A choice option: left out, valid, or one a client would never send."""
    return optional(st.sampled_from((*valid, "", "EPIC", valid[0].upper(), valid[0] + " ")))


def ints(*edges: int) -> st.SearchStrategy[int | None]:
    """An integer option: anything in 64 bits, the edges, or far beyond."""
    return optional(
        st.one_of(
            st.integers(-(2**63), 2**63 - 1),
            st.sampled_from((*edges, 10**30, -(10**30))),
            st.sampled_from(NOT_NUMBERS),  # values that do not convert are sent raw
        )
    )


def floats(*edges: float) -> st.SearchStrategy[float | None]:
    """A number option, NaN and infinities included."""
    return optional(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.sampled_from(edges),
            st.sampled_from(NOT_NUMBERS),
        )
    )


class ErrorLog(logging.Handler):
    """Collects every ERROR (or worse) record: an unhandled exception or a reported failure."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        return [
            f"{r.name}: {r.getMessage()} {r.exc_info and r.exc_info[1]!r}" for r in self.records
        ]


@dataclass
class Outcome:
    """What one interaction did: its record, the bot's messages touched meanwhile, new rows."""

    record: InteractionRecord
    messages: list[MessageRecord]
    new_generations: int
    requests_failed: list[str] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        """Answered at once with an ephemeral message (a refusal or an ephemeral answer)."""
        original = self.record.original
        return self.record.callback_type == 4 and original is not None and original.ephemeral

    @property
    def text(self) -> str:
        return "\n".join(m.content for m in self.messages)


@dataclass
class Harness:
    """One emulator, one bot on a real SQLite file, and the replaying engine double."""

    emu: DiscordEmulator
    bot: MuseBot
    engine: ReplayEngine
    db: Path
    errors: ErrorLog
    settle_timeout_s: float = 15.0  # the real model on a busy machine needs more

    def rows(self, sql: str, *args: Any) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(self.db)) as conn:
            return conn.execute(sql, args).fetchall()

    def count(self, table: str) -> int:
        assert table in ("generations", "feedback", "feedback_events", "comparisons", "users")
        return self.rows(f"SELECT COUNT(*) FROM {table}")[0][0]

    async def settle(self, record: InteractionRecord, quiet_s: float = 0.08) -> None:
        """Wait until the interaction is answered and not "thinking…", no generation runs,
        and the bot has sent nothing to Discord for `quiet_s`."""
        deadline = time.monotonic() + self.settle_timeout_s
        state = self.emu.state
        while True:
            last = state.requests[-1].at if state.requests else 0.0
            original = record.original
            done = (
                record.acknowledged
                and not (original is not None and original.loading)
                and not self.bot.app.active
                and not self.bot.app.limits._running_users
                and time.monotonic() - max(last, record.last_activity) >= quiet_s
            )
            if done:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"interaction {record.id} not settled: callback {record.callback_type}, "
                    f"loading {original is not None and original.loading}, active "
                    f"{self.bot.app.active}"
                )
            await asyncio.sleep(0.02)

    async def run(self, start: Awaitable[InteractionRecord]) -> Outcome:
        """Dispatch an interaction, wait for it to settle, and check what must always hold."""
        self.errors.records.clear()  # each interaction answers for its own log lines
        since, before = time.monotonic(), self.count("generations")
        first_request = len(self.emu.state.requests)
        record = await start
        await self.settle(record)
        touched = [
            m
            for m in self.emu.state.bot_messages()
            if m.history and m.history[-1].at >= since and m.author.id == self.emu.bot_user.id
        ]
        failed = [
            f"{r.method} {r.path} -> {r.status}"
            for r in self.emu.state.requests[first_request:]
            if r.status >= 400
        ]
        outcome = Outcome(record, touched, self.count("generations") - before, failed)
        check_outcome(self, outcome)
        return outcome


def check_outcome(harness: Harness, outcome: Outcome) -> None:
    """The invariants of every answer to any input."""
    record = outcome.record
    assert record.acknowledged, "the interaction was never answered"
    assert not (record.original and record.original.loading), '"thinking…" was left'
    assert not harness.errors.records, harness.errors.lines()
    assert not outcome.requests_failed, outcome.requests_failed
    assert GENERIC_FAILURE not in outcome.text, outcome.text[:300]
    for message in outcome.messages:
        assert message.pings_no_one, (message.content[:100], message.allowed_mentions)
        assert len(message.content) <= CONTENT_LIMIT
        descriptions = [len(e.get("description") or "") for e in message.embeds]
        assert all(n <= DESCRIPTION_LIMIT for n in descriptions)
        assert sum(embed_size(e) for e in message.embeds) <= EMBEDS_LIMIT
    if outcome.refused:
        assert record.original.content.strip(), "an empty refusal"
        assert outcome.new_generations == 0, "a refused command recorded a generation"
    assert harness.rows("SELECT id FROM generations WHERE status = 'running'") == []


def embed_size(embed: dict[str, Any]) -> int:
    """Characters Discord counts towards the 6,000 of a message's embeds."""
    footer = (embed.get("footer") or {}).get("text") or ""
    return len(embed.get("title") or "") + len(embed.get("description") or "") + len(footer)


def outside_code(text: str) -> str:
    """`text` without its closed ``` blocks (where markdown does not render; an unclosed
    fence renders as text). Inline code is not exempt: the bot neutralises links there too."""
    return re.sub(r"```.*?```", " ", text, flags=re.DOTALL)


@contextlib.asynccontextmanager
async def harness(emu: DiscordEmulator, tmp_path: Path, **settings: Any) -> AsyncIterator[Harness]:
    """A bot with no per-minute limit, fast edits, a replay engine, and an error log."""
    engine = ReplayEngine(delay_s=0.0005)
    errors = ErrorLog()
    root = logging.getLogger()
    root.addHandler(errors)
    db = tmp_path / "muse.db"
    try:
        async with muse(emu, db, engine, user_per_minute=0, **settings) as bot:
            bot.app.edit_interval_s = 0.02
            yield Harness(emu, bot, engine, db, errors)
    finally:
        root.removeHandler(errors)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
