"""Fixtures for the storage tests: real SQLite files under tmp_path, a controllable clock.

`store` runs each test that takes it on both engines: an SQLite file, and a fresh database on
the session's PostgreSQL server (`tests.postgres_server`). A test that also takes `db_path`
looks at the SQLite file itself, so it runs on SQLite only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from storage.store import Store
from tests.postgres_server import PostgresServer
from tests.storage.storage_data import COMPARE_PROMPT, OTHER_PROMPT, PROMPT

ENGINES = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames:
        on_file = "db_path" in metafunc.fixturenames
        metafunc.parametrize("engine", ENGINES[:1] if on_file else ENGINES)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def prompt() -> list[dict[str, str]]:
    """The messages a typical generation sent to the model."""
    return [dict(message) for message in PROMPT]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2025, 3, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "muse.db"


@pytest.fixture
def database(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where `store` keeps its rows: an SQLite file, or a new PostgreSQL database's URL."""
    if engine == "sqlite":
        return tmp_path / "muse.db"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest.fixture
async def store(database: Path | str, clock: FakeClock) -> AsyncIterator[Store]:
    async with Store.open(database, clock=clock) as opened:
        yield opened


MakeGeneration = Callable[..., Awaitable[int]]


@pytest.fixture
def make_generation(store: Store) -> MakeGeneration:
    """Record a generation and (unless status="running") finish it; returns its id."""

    async def make(
        user_id: int = 1,
        output: str | None = "Once upon a time.",
        status: str = "done",
        messages: list[dict[str, str]] | None = None,
        **record: Any,
    ) -> int:
        record.setdefault("task", "story")
        record.setdefault("params", {"seed": 7, "temperature": 0.8})
        record.setdefault("model_id", "smollm2-135m")
        record.setdefault("guild_id", 100)
        generation_id = await store.record_generation(
            user_id=user_id, messages=messages or PROMPT, **record
        )
        if status != "running":
            await store.finish_generation(
                generation_id, output or "", "stop", 20, 40, 80.0, 2000.0, status=status
            )
        return generation_id

    return make


@pytest.fixture
async def rated(store: Store, clock: FakeClock, make_generation: MakeGeneration) -> dict[str, int]:
    """A hand-built database for the export tests; returns the generation ids by name.

    g1  user 1, story, guild 100: 👍 by 2, ⭐5 by 3             score  2
    g2  user 2, 🔁 of g1 (same prompt): 👎 by 1                  score -1
    g3  user 1, poem, guild 200: 👍 by 1 (self)                  score  1, self-vote
    g4  user 4 (opted out): 👍 by 2                              never exported
    g5  user 1, deleted after 👍 by 2                            never exported
    g6  user 1, failed: 👍 by 2                                  raw only
    g7, g8  user 5, /compare pair: A by 6 and 7, B by 8 and by 4 (opted out)
    g9  user 3: ⭐3 by 2                                         score  0
    g10 user 2: 👍 by 4 (opted out: not counted)                 score  0
    g11 user 3, nine days later: 👍 by 2                         score  1
    """
    ids = {}
    ids["g1"] = await make_generation(user_id=1, output="O1")
    await store.record_feedback(ids["g1"], 2, thumbs="up")
    await store.record_feedback(ids["g1"], 3, stars=5, comment="vivid")
    ids["g2"] = await make_generation(user_id=2, output="O2", parent_id=ids["g1"])
    await store.record_feedback(ids["g2"], 1, thumbs="down")
    ids["g3"] = await make_generation(
        user_id=1, output="O3", task="poem", guild_id=200, messages=OTHER_PROMPT
    )
    await store.record_feedback(ids["g3"], 1, thumbs="up")
    ids["g4"] = await make_generation(user_id=4, output="O4")
    await store.record_feedback(ids["g4"], 2, thumbs="up")
    ids["g5"] = await make_generation(user_id=1, output="O5")
    await store.record_feedback(ids["g5"], 2, thumbs="up")
    await store.mark_deleted(ids["g5"])
    ids["g6"] = await make_generation(user_id=1, output="O6", status="failed")
    await store.record_feedback(ids["g6"], 2, thumbs="up")
    ids["g7"] = await make_generation(
        user_id=5, output="O7", task="describe", messages=COMPARE_PROMPT
    )
    ids["g8"] = await make_generation(
        user_id=5, output="O8", task="describe", messages=COMPARE_PROMPT
    )
    for voter, winner in ((6, "A"), (7, "A"), (8, "B"), (4, "B")):
        await store.record_comparison("a lamp", ids["g7"], ids["g8"], voter, winner)
    ids["g9"] = await make_generation(user_id=3, output="O9")
    await store.record_feedback(ids["g9"], 2, stars=3)
    ids["g10"] = await make_generation(user_id=2, output="O10")
    await store.record_feedback(ids["g10"], 4, thumbs="up")
    await store.set_opted_out(4, True)
    clock.advance(days=9)
    ids["g11"] = await make_generation(user_id=3, output="O11")
    await store.record_feedback(ids["g11"], 2, thumbs="up")
    return ids


@pytest.fixture
async def edited(store: Store, rated: dict[str, int], make_generation: MakeGeneration):
    """`rated` plus edits (✏️), made nine days in; returns every id by name.

    e1  user 6 edits g1 (score 2), channel 300, message 400     score 0: sft, kto, dpo over g1
    e2  user 7 edits g2: 👎 by 8                                score -1: raw only
    e3  user 4 (opted out) edits g9                             never exported
    g12 user 9 (opted out later), 🔁 of g11                     never exported
    e4  user 6 edits g12: its original's requester opted out    never exported
    g13 user 3, persona "Pirate" in its params, unrated         score 0: raw; dpo as rejected
    e5  user 2 edits g13: 👍 by 1                               score 1: sft, kto, dpo margin 2
    e6  user 8 edits e1 (an edit of an edit)                    score 0: sft, kto, dpo over e1
    e7  user 6 edits g3, then deleted                           never exported
    e8  user 7 edits g6 (failed)                                score 0: sft, kto; no dpo
    """
    ids = dict(rated)

    async def edit(original: str, user_id: int, text: str, **where: Any) -> int:
        where.setdefault("guild_id", 100)
        where.setdefault("channel_id", 300)
        return await store.record_edit(ids[original], user_id, text, **where)

    ids["e1"] = await edit("g1", 6, "O1, better.", message_id=400)
    ids["e2"] = await edit("g2", 7, "O2, fixed.")
    await store.record_feedback(ids["e2"], 8, thumbs="down")
    ids["e3"] = await edit("g9", 4, "O9 by an opted-out editor")
    ids["g12"] = await make_generation(user_id=9, output="O12", parent_id=ids["g11"])
    await store.set_opted_out(9, True)
    ids["e4"] = await edit("g12", 6, "O12, fixed.")
    ids["g13"] = await make_generation(
        user_id=3, output="O13", params={"seed": 9, "persona": "Pirate"}
    )
    ids["e5"] = await edit("g13", 2, "O13, arr.")
    await store.record_feedback(ids["e5"], 1, thumbs="up")
    ids["e6"] = await edit("e1", 8, "O1, best.")
    ids["e7"] = await edit("g3", 6, "O3, deleted.", guild_id=200)
    await store.mark_deleted(ids["e7"])
    ids["e8"] = await edit("g6", 7, "O6, finished.")
    return ids
