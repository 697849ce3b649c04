"""The loop's pure parts: the challenger's odds from arena votes, and the adapter check."""

from __future__ import annotations

from bot.core.loop.checks import degenerate, loss_verdict
from bot.core.loop.odds import p_better, standing
from storage.rows import ArenaVote


def votes(pattern: str, voters: int = 3) -> list[ArenaVote]:
    """`pattern`: one letter a vote — c (challenger won), d (default won), t (tie)."""
    winner = {"c": "A", "d": "B", "t": "tie"}
    return [
        ArenaVote("new", "old", winner[v], False, voter=n % voters) for n, v in enumerate(pattern)
    ]


def test_standing_counts_only_battles_of_the_two_and_who_voted() -> None:
    mixed = [*votes("ccd"), ArenaVote("other", "old", "A", False, voter=9)]
    record = standing(mixed, "new", "old")
    assert (record.votes, record.voters, record.challenger_wins) == (3, 3, 2.0)
    flipped = [ArenaVote("old", "new", "A", False, voter=1)]  # the default on side A won
    assert standing(flipped, "new", "old").challenger_wins == 0.0
    assert standing([], "new", "old").p_better is None


def test_p_better_is_decisive_only_with_a_clear_majority() -> None:
    assert standing(votes("c" * 30), "new", "old").p_better == 1.0
    assert standing(votes("d" * 30), "new", "old").p_better == 0.0
    even = standing(votes("cd" * 15), "new", "old").p_better
    assert 0.3 < even < 0.7
    clear = standing(votes("c" * 22 + "d" * 8), "new", "old").p_better
    assert clear > 0.95
    assert p_better([0.5] * 10) == 0.5  # all ties: no side is better
    assert p_better([1.0, 0.0, 1.0]) == p_better([1.0, 0.0, 1.0])  # seeded


def test_degenerate_texts_are_named_and_ordinary_ones_pass() -> None:
    assert degenerate("") is not None and degenerate("ok") is not None
    assert "over and over" in degenerate("the sea is " * 10)
    assert "over and over" in degenerate("\n".join(["wave"] * 8))
    assert (
        degenerate("The sea glitters under a pale moon, and gulls call over the harbour.") is None
    )


def test_the_held_out_loss_must_improve() -> None:
    assert loss_verdict({"before": {"loss": 2.0}, "after": {"loss": 1.5}}) is None
    assert "did not improve" in loss_verdict({"before": {"loss": 2.0}, "after": {"loss": 2.1}})
    assert "no held-out loss" in loss_verdict({})
