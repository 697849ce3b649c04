"""Arena votes: comparisons of two different models' answers, read for the leaderboard."""

from __future__ import annotations

import pytest

from storage.arena import leaderboard_votes
from storage.leaderboard import Vote, build_leaderboard
from storage.rows import ArenaVote
from storage.store import Store


@pytest.fixture
async def arena(store: Store, make_generation) -> dict[str, int]:
    """Answers by models a, b and c (requested by user 1) in guild 100, and one in guild 200."""
    ids = {}
    for name, model, task, guild in (
        ("a", "model-a", "story", 100), ("b", "model-b", "story", 100),
        ("c", "model-c", "poem", 100), ("a2", "model-a", "story", 100),
        ("x", "model-a", "story", 200), ("y", "model-b", "story", 200),
    ):  # fmt: skip
        ids[name] = await make_generation(user_id=1, model_id=model, task=task, guild_id=guild)
    return ids


async def test_votes_between_different_models(store: Store, arena) -> None:
    g = arena
    await store.record_comparison("p", g["a"], g["b"], 2, "A")
    await store.record_comparison("p", g["a"], g["b"], 1, "B")  # the requester: a self vote
    await store.record_comparison("p", g["a"], g["a2"], 2, "A")  # one model on both sides
    await store.record_comparison("p", g["b"], g["c"], 3, "tie")
    await store.record_comparison("p", g["x"], g["y"], 2, "B")
    assert await store.arena_votes() == [
        ArenaVote("model-a", "model-b", "A", False),
        ArenaVote("model-a", "model-b", "B", True),
        ArenaVote("model-b", "model-c", "tie", False),
        ArenaVote("model-a", "model-b", "B", False),
    ]
    assert [v.winner for v in await store.arena_votes(guild_id=100)] == ["A", "B", "tie"]
    assert [v.winner for v in await store.arena_votes(guild_id=200)] == ["B"]
    assert [v.winner for v in await store.arena_votes(task="story")] == ["A", "B", "B"]
    assert await store.arena_votes(task="poem") == []  # b (a story) against c (a poem)
    assert await store.arena_votes(guild_id=100, task="poem") == []
    assert await store.arena_votes(guild_id=999) == []


async def test_a_later_vote_replaces_in_either_order(store: Store, arena) -> None:
    g = arena
    await store.record_comparison("p", g["a"], g["b"], 2, "A")
    await store.record_comparison("p", g["a"], g["b"], 2, "tie")
    assert await store.arena_votes() == [ArenaVote("model-a", "model-b", "tie", False)]
    await store.record_comparison("p", g["b"], g["a"], 2, "A")  # the same pair, shown swapped
    assert await store.arena_votes() == [ArenaVote("model-b", "model-a", "A", False)]
    await store.record_comparison("p", g["a"], g["b"], 3, "B")  # another voter: another vote
    assert len(await store.arena_votes()) == 2


async def test_opted_out_voters_deleted_answers_and_edits_are_left_out(store: Store, arena) -> None:
    g = arena
    await store.record_comparison("p", g["a"], g["b"], 4, "A")
    await store.record_comparison("p", g["a"], g["c"], 5, "A")
    edit = await store.record_edit(g["c"], 6, "an edit", guild_id=100, channel_id=1)
    await store.record_comparison("p", g["a"], edit, 7, "B")  # an edit is no model's answer
    await store.set_opted_out(4, True)
    await store.mark_deleted(g["c"])
    assert await store.arena_votes() == []
    await store.set_opted_out(4, False)
    assert await store.arena_votes() == [ArenaVote("model-a", "model-b", "A", False)]


def test_leaderboard_votes_and_a_fit() -> None:
    votes = [
        ArenaVote("a", "b", "A", False), ArenaVote("a", "b", "A", True),
        ArenaVote("b", "a", "tie", False),
    ]  # fmt: skip
    assert leaderboard_votes(votes) == [
        Vote("a", "b", "A"),
        Vote("a", "b", "A"),
        Vote("b", "a", "tie"),
    ]
    assert leaderboard_votes(votes, include_self=False) == [
        Vote("a", "b", "A"),
        Vote("b", "a", "tie"),
    ]
    assert leaderboard_votes([]) == []
    board = build_leaderboard(leaderboard_votes(votes), rounds=0)
    assert [row.model for row in board.rows] == ["a", "b"]
    assert board.rows[0].win_rate == pytest.approx(2.5 / 3)
