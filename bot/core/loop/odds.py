"""How a challenger stands against the default in the arena: votes, voters, win rate, and the
bootstrap probability that it is the better model (ties count half a win to each side)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from storage.rows import ArenaVote

BOOTSTRAP_ROUNDS = 2000
SEED = 0  # the same votes give the same probability


@dataclass(frozen=True, slots=True)
class Standing:
    """The challenger's record in its battles with the default."""

    votes: int
    voters: int
    challenger_wins: float  # ties count ½
    p_better: float | None  # None: no votes yet

    @property
    def win_rate(self) -> float | None:
        return None if not self.votes else self.challenger_wins / self.votes


def standing(votes: Sequence[ArenaVote], challenger: str, default: str) -> Standing:
    """The challenger against the default over the arena votes between exactly those two."""
    scores = []
    voters = set()
    for vote in votes:
        if {vote.model_a, vote.model_b} != {challenger, default}:
            continue
        voters.add(vote.voter)
        if vote.winner == "tie":
            scores.append(0.5)
        else:
            winner = vote.model_a if vote.winner == "A" else vote.model_b
            scores.append(1.0 if winner == challenger else 0.0)
    if not scores:
        return Standing(0, 0, 0.0, None)
    return Standing(len(scores), len(voters), float(sum(scores)), p_better(scores))


def p_better(scores: Sequence[float]) -> float:
    """P(the challenger wins more than half), by resampling the votes with replacement; a
    resample exactly at one half counts half."""
    values = np.asarray(scores, dtype=float)
    rng = np.random.default_rng(SEED)
    picks = rng.integers(0, len(values), size=(BOOTSTRAP_ROUNDS, len(values)))
    shares = values[picks].mean(axis=1)
    return float(((shares > 0.5) + 0.5 * (shares == 0.5)).mean())
