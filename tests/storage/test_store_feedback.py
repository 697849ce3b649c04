"""Ratings: the latest action decides a rater's verdict; score = good raters - bad raters."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import writes
from storage.errors import GenerationGone
from storage.migrations import migrate
from storage.rows import verdict_of
from storage.store import Store
from tests.storage import peek


@pytest.mark.parametrize(
    ("thumbs", "stars", "verdict"),
    [("up", None, 1), ("down", None, -1), (None, 1, -1), (None, 2, -1), (None, 3, 0),
     (None, 4, 1), (None, 5, 1)],
)  # fmt: skip
def test_verdict_of_one_action(thumbs, stars, verdict) -> None:
    assert verdict_of(thumbs, stars) == verdict


@pytest.mark.parametrize(
    ("thumbs", "stars"), [(None, None), ("up", 5), ("sideways", None), (None, 0), (None, 6)]
)
def test_malformed_actions(thumbs, stars) -> None:
    with pytest.raises(ValueError):
        verdict_of(thumbs, stars)


async def test_changed_votes_latest_action_decides(store: Store, database, make_generation):
    generation_id = await make_generation(user_id=1)
    assert (await store.record_feedback(generation_id, 2, thumbs="up")).score == 1
    outcome = await store.record_feedback(generation_id, 2, thumbs="down")
    assert (outcome.verdict, outcome.score) == ("bad", -1)
    outcome = await store.record_feedback(generation_id, 2, stars=4)  # stars after thumbs
    assert (outcome.verdict, outcome.score) == ("good", 1)
    outcome = await store.record_feedback(generation_id, 3, stars=1)
    assert (outcome.verdict, outcome.score) == ("bad", 0)
    outcome = await store.record_feedback(generation_id, 3, stars=3)
    assert (outcome.verdict, outcome.score) == ("neutral", 1)
    outcome = await store.record_feedback(generation_id, 4, thumbs="up")
    assert outcome.score == 2
    found = peek.rows(
        database, "SELECT user_id, thumbs, stars, verdict FROM feedback ORDER BY user_id"
    )
    events = peek.rows(
        database, "SELECT user_id, thumbs, stars, verdict FROM feedback_events ORDER BY id"
    )
    # One row per rater, holding the last thumbs and the last stars.
    assert found == [(2, "down", 4, 1), (3, None, 3, 0), (4, "up", None, 1)]
    assert events == [
        (2, "up", None, 1), (2, "down", None, -1), (2, None, 4, 1),
        (3, None, 1, -1), (3, None, 3, 0), (4, "up", None, 1),
    ]  # fmt: skip


async def test_comments_are_kept_cleared_or_alone(store: Store, database, make_generation):
    generation_id = await make_generation()
    await store.record_feedback(generation_id, 2, stars=5, comment="lovely")
    await store.record_feedback(generation_id, 2, thumbs="up")  # comment kept
    outcome = await store.record_feedback(generation_id, 3, comment="just a note")
    assert (outcome.verdict, outcome.score) == ("neutral", 1)  # a comment alone is no vote
    comments = peek.rows(database, "SELECT user_id, comment FROM feedback ORDER BY user_id")
    assert comments == [(2, "lovely"), (3, "just a note")]
    await store.record_feedback(generation_id, 2, stars=4, comment="")
    assert peek.rows(database, "SELECT comment FROM feedback WHERE user_id = 2") == [(None,)]
    with pytest.raises(ValueError):
        await store.record_feedback(generation_id, 2)
    with pytest.raises(ValueError):
        await store.record_feedback(generation_id, 2, thumbs="up", stars=5)


async def test_self_votes_count_and_are_flagged(store: Store, database, make_generation):
    generation_id = await make_generation(user_id=7)
    mine = await store.record_feedback(generation_id, 7, thumbs="up")
    theirs = await store.record_feedback(generation_id, 8, thumbs="up")
    assert (mine.is_self, theirs.is_self, theirs.score) == (True, False, 2)
    flags = peek.rows(database, "SELECT user_id, is_self FROM feedback ORDER BY user_id")
    assert flags == [(7, 1), (8, 0)]


async def test_comparisons_one_per_user_per_pair(store: Store, database, make_generation):
    a = await make_generation(user_id=1)
    b = await make_generation(user_id=1)
    await store.record_comparison("a dragon", a, b, 2, "A")
    await store.record_comparison("a dragon", a, b, 2, "B")  # changed her mind
    await store.record_comparison("a dragon", a, b, 3, "tie")
    votes = peek.rows(database, "SELECT user_id, winner FROM comparisons ORDER BY user_id")
    assert votes == [(2, "B"), (3, "tie")]
    with pytest.raises(ValueError):
        await store.record_comparison("x", a, b, 2, "C")
    with pytest.raises(ValueError):
        await store.record_comparison("x", a, a, 2, "A")
    await store.mark_deleted(b)
    with pytest.raises(GenerationGone):
        await store.record_comparison("a dragon", a, b, 4, "A")
    with pytest.raises(GenerationGone):
        await store.record_comparison("a dragon", a, 999, 4, "A")


_action = st.one_of(
    st.tuples(st.just("thumbs"), st.sampled_from(["up", "down"])),
    st.tuples(st.just("stars"), st.integers(1, 5)),
    st.tuples(st.just("comment"), st.text(max_size=5)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), _action), max_size=25))
def test_score_is_good_minus_bad_latest_actions(actions) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    generation_id = writes.record_generation(
        conn,
        {
            "parent_id": None, "conversation_id": None, "user_id": 1, "guild_id": None,
            "channel_id": None, "message_id": None, "task": "story", "fields_json": "{}",
            "messages_json": "[]", "params_json": "{}", "model_id": "m", "model_revision": None,
            "created_utc": "2025-01-01T00:00:00.000Z",
        },
    )  # fmt: skip
    latest: dict[int, int] = {}
    score = 0
    for rater, (kind, value) in actions:
        outcome = writes.record_feedback(
            conn, generation_id, rater,
            value if kind == "thumbs" else None, value if kind == "stars" else None,
            value if kind == "comment" else None, "2025-01-01T00:00:00.000Z",
        )  # fmt: skip
        if kind == "thumbs":
            latest[rater] = 1 if value == "up" else -1
        elif kind == "stars":
            latest[rater] = 1 if value >= 4 else -1 if value <= 2 else 0
        score = outcome.score
        assert outcome.is_self == (rater == 1)
    expected = sum(v == 1 for v in latest.values()) - sum(v == -1 for v in latest.values())
    assert score == (expected if actions else 0)
    events = conn.execute("SELECT COUNT(*) FROM feedback_events").fetchone()[0]
    assert events == len(actions)
    conn.close()
