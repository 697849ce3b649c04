"""The arena leaderboard's arithmetic: a Bradley–Terry fit of A/B votes on an Elo-like scale.

Pure functions of a sequence of `Vote`s: no SQL, no I/O but the chart's PNG bytes. A tie counts
as half a win to each side. Scores are 1000 + 400·log10(strength / geometric mean strength): a
400-point gap means 10:1 odds, and the scores' mean is 1000. The 95 % intervals come from a
seeded bootstrap of the votes, so the same votes and seed always give the same table.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Winner = Literal["A", "B", "tie"]

#: Points per natural-log unit of odds: 400·log10(odds) = SCALE·ln(odds).
SCALE = 400 / math.log(10)
ANCHOR = 1000.0
#: L2 penalty on the natural-log strengths (a Gaussian prior with sd 10, about 1700 points).
#: Negligible where a model has both wins and losses; keeps an unbeaten (or winless) model's
#: score finite, where the plain MLE runs off to infinity.
PRIOR = 0.01
ROUNDS = 200
SEED = 20250301

# Outcome codes of a tallied vote between models i < j (indices into the sorted model names).
_FIRST, _SECOND, _TIE = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Vote:
    """One A/B vote: which of two models' answers won, or a tie."""

    model_a: str
    model_b: str
    winner: Winner

    def __post_init__(self) -> None:
        if self.winner not in ("A", "B", "tie"):
            raise ValueError(f"winner must be 'A', 'B' or 'tie', not {self.winner!r}")


@dataclass(frozen=True, slots=True)
class LeaderboardRow:
    """One model's line: score with its 95 % interval, games played, share won (ties half)."""

    model: str
    score: float
    lower: float
    upper: float
    votes: int
    win_rate: float


@dataclass(frozen=True, slots=True)
class Leaderboard:
    """Rows best first, and `matrix[a][b]`: a's win rate against b (ties half), None where the
    two never met. The matrix's keys, outer and inner, follow the rows' order."""

    rows: list[LeaderboardRow]
    matrix: dict[str, dict[str, float | None]]

    def as_json(self) -> list[dict[str, str | float | int]]:
        """The rows as plain dicts, best first: scores to 0.1 point, win rates to 0.1 %."""
        return [
            {
                "model": row.model,
                "score": round(row.score, 1),
                "lower": round(row.lower, 1),
                "upper": round(row.upper, 1),
                "votes": row.votes,
                "win_rate": round(row.win_rate, 3),
            }
            for row in self.rows
        ]


@dataclass(frozen=True, slots=True)
class _Tally:
    """Votes grouped by (i, j, outcome) with i < j: the unit the bootstrap resamples."""

    models: list[str]
    pairs: np.ndarray  # (K, 2) model indices, i < j
    outcomes: np.ndarray  # (K,) _FIRST, _SECOND or _TIE
    counts: np.ndarray  # (K,) votes in each group


def _tally(votes: Iterable[Vote]) -> _Tally:
    """Group the votes, dropping those with one model on both sides."""
    groups: Counter[tuple[str, str, int]] = Counter()
    for vote in votes:
        a, b = vote.model_a, vote.model_b
        if a == b:
            continue
        outcome = {"A": _FIRST, "B": _SECOND, "tie": _TIE}[vote.winner]
        if a > b:  # one orientation per pair, so (b, a, "B") and (a, b, "A") are one group
            a, b = b, a
            outcome = {_FIRST: _SECOND, _SECOND: _FIRST, _TIE: _TIE}[outcome]
        groups[a, b, outcome] += 1
    models = sorted({name for a, b, _ in groups for name in (a, b)})
    index = {name: i for i, name in enumerate(models)}
    keys = sorted(groups)  # a fixed order, so a seed draws the same resample every time
    return _Tally(
        models=models,
        pairs=np.array([(index[a], index[b]) for a, b, _ in keys], dtype=np.intp).reshape(-1, 2),
        outcomes=np.array([o for _, _, o in keys], dtype=np.intp),
        counts=np.array([groups[key] for key in keys], dtype=float),
    )


def _wins(tally: _Tally, counts: np.ndarray) -> np.ndarray:
    """Win matrices `(R, n, n)` from group counts `(R, K)`: [r, i, j] is i's wins over j."""
    n = len(tally.models)
    wins = np.zeros((counts.shape[0], n * n))
    i, j = tally.pairs[:, 0], tally.pairs[:, 1]
    # Within one outcome the (i, j) cells are distinct, so each `+=` touches a cell at most once.
    for outcome, rows, cols, share in (
        (_FIRST, i, j, 1.0),
        (_SECOND, j, i, 1.0),
        (_TIE, i, j, 0.5),
        (_TIE, j, i, 0.5),
    ):
        chosen = tally.outcomes == outcome
        wins[:, rows[chosen] * n + cols[chosen]] += share * counts[:, chosen]
    return wins.reshape(-1, n, n)


def _objective(theta: np.ndarray, wins: np.ndarray, prior: float) -> np.ndarray:
    """Penalised negative log-likelihood per round: Σ w_ij·log(1 + e^(θj−θi)) + prior/2·|θ|²."""
    gap = theta[:, None, :] - theta[:, :, None]  # [r, i, j] = θj − θi
    return (wins * np.logaddexp(0.0, gap)).sum(axis=(1, 2)) + 0.5 * prior * (theta**2).sum(axis=1)


def fit_strengths(
    wins: np.ndarray,
    prior: float = PRIOR,
    start: np.ndarray | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-12,
) -> np.ndarray:
    """Natural-log Bradley–Terry strengths `(R, n)` for win matrices `(R, n, n)`, all at once.

    Maximises Σ w_ij·log σ(θi − θj) − prior/2·|θ|² by Newton's method with a backtracking line
    search, each round on its own. With `prior > 0` the objective is strictly convex, so the
    optimum is unique and finite even when a model won (or lost) every game or the comparison
    graph falls apart; it also centres the strengths (Σθ = 0 at the optimum), so a group of
    models that never met the others sits around the mean. `start` warm-starts the search.
    """
    rounds, n, _ = wins.shape
    theta = np.zeros((rounds, n)) if start is None else np.array(start, dtype=float)
    theta = np.broadcast_to(theta, (rounds, n)).copy()
    games = wins + wins.transpose(0, 2, 1)
    eye = np.eye(n)
    value = _objective(theta, wins, prior)
    for _ in range(max_iter):
        p = 0.5 * (1.0 + np.tanh(0.5 * (theta[:, :, None] - theta[:, None, :])))  # σ(θi − θj)
        grad = (games * p - wins).sum(axis=2) + prior * theta
        weight = games * p * (1.0 - p)
        hess = eye * (weight.sum(axis=2) + prior)[:, :, None] - weight
        step = np.linalg.solve(hess, grad[:, :, None])[:, :, 0]
        decrement = (grad * step).sum(axis=1)  # the Newton decrement², ≥ 0
        active = decrement > tol
        if not active.any():
            break
        size = np.ones(rounds)
        for _ in range(60):
            trial = theta - size[:, None] * step
            trial_value = _objective(trial, wins, prior)
            # Armijo's condition, with slack for rounding once the steps become tiny.
            short = trial_value > value - 0.25 * size * decrement + 1e-12 * np.abs(value)
            short &= active
            if not short.any():
                break
            size = np.where(short, 0.5 * size, size)
        theta = np.where(active[:, None], trial, theta)
        value = np.where(active, trial_value, value)
    return theta


def _scores(theta: np.ndarray) -> np.ndarray:
    """Elo-like scores: 400·log10 odds, anchored so each round's mean score is 1000."""
    return ANCHOR + SCALE * (theta - theta.mean(axis=-1, keepdims=True))


def build_leaderboard(
    votes: Iterable[Vote],
    *,
    rounds: int = ROUNDS,
    seed: int = SEED,
    prior: float = PRIOR,
) -> Leaderboard:
    """The leaderboard of `votes`: Bradley–Terry scores with seeded 95 % bootstrap intervals.

    The bootstrap redraws as many votes as there are, with replacement, `rounds` times (drawn
    as multinomial counts over the distinct (pair, outcome) groups, which is the same thing
    and costs nothing per vote), refits each warm-started from the point estimate, and takes
    the 2.5th and 97.5th percentiles. A round in which a model drew no game says nothing about
    it and is left out of that model's interval. `rounds=0` gives intervals of zero width.
    """
    if rounds < 0:
        raise ValueError("rounds must be 0 or more")
    tally = _tally(votes)
    if not tally.models:
        return Leaderboard(rows=[], matrix={})
    wins = _wins(tally, tally.counts[None, :])
    theta = fit_strengths(wins, prior)
    scores = _scores(theta)[0]
    lower, upper = scores.copy(), scores.copy()
    if rounds:
        rng = np.random.default_rng(seed)
        total = int(tally.counts.sum())
        draws = rng.multinomial(total, tally.counts / total, size=rounds).astype(float)
        resampled = _wins(tally, draws)
        boot = _scores(fit_strengths(resampled, prior, start=theta))
        played = (resampled + resampled.transpose(0, 2, 1)).sum(axis=2) > 0
        boot = np.where(played, boot, np.nan)
        seen = played.any(axis=0)
        low, high = np.nanpercentile(boot[:, seen], [2.5, 97.5], axis=0)
        lower[seen], upper[seen] = low, high
    return _board(tally.models, wins[0], scores, lower, upper)


def _board(
    models: Sequence[str],
    wins: np.ndarray,
    scores: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
) -> Leaderboard:
    """Rows best first (ties of score by name) and the pairwise win-rate matrix."""
    games = wins + wins.T
    order = sorted(range(len(models)), key=lambda i: (-scores[i], models[i]))
    rows = [
        LeaderboardRow(
            model=models[i],
            score=float(scores[i]),
            lower=float(lower[i]),
            upper=float(upper[i]),
            votes=round(games[i].sum()),
            win_rate=float(wins[i].sum() / games[i].sum()),
        )
        for i in order
    ]
    matrix = {
        models[i]: {
            models[j]: float(wins[i, j] / games[i, j]) if games[i, j] else None for j in order
        }
        for i in order
    }
    return Leaderboard(rows=rows, matrix=matrix)


def _short(name: str, width: int) -> str:
    """The name's end (where model ids differ: sizes, versions), cut to `width` characters."""
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def format_table(board: Leaderboard) -> str:
    """A plain-text table for the terminal (`muse leaderboard`)."""
    if not board.rows:
        return "No arena votes yet."
    lines = [f"{'#':>3} {'model':<32} {'score':>6} {'95% interval':>13} {'votes':>6} {'won':>6}"]
    for rank, row in enumerate(board.rows, start=1):
        interval = f"{row.lower:.0f}–{row.upper:.0f}"
        lines.append(
            f"{rank:>3} {_short(row.model, 32):<32} {row.score:>6.0f} {interval:>13} "
            f"{row.votes:>6} {row.win_rate:>6.1%}"
        )
    return "\n".join(lines)


def leaderboard_chart_png(board: Leaderboard, title: str = "Arena leaderboard") -> bytes:
    """A PNG of each model's score (dot) and 95 % interval (bar), best at the top.

    Like `storage.stats.ratings_chart_png`: a bare `Figure` on the Agg canvas, no pyplot.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = board.rows
    figure = Figure(figsize=(7, 1.5 + 0.5 * max(len(rows), 1)), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if rows:
        names = [_short(row.model, 32) for row in rows]
        scores = [row.score for row in rows]
        # A percentile interval can, rarely, miss its own point estimate; matplotlib refuses
        # negative error bars, so such a side is drawn with no length.
        spread = [
            [max(row.score - row.lower, 0.0) for row in rows],
            [max(row.upper - row.score, 0.0) for row in rows],
        ]
        axes.errorbar(
            scores, names, xerr=spread, fmt="o", color="#1e88e5", ecolor="#90caf9",
            elinewidth=4, capsize=0, markersize=7,
        )  # fmt: skip
        axes.axvline(ANCHOR, color="#bdbdbd", linestyle="--", linewidth=1, zorder=0)
        for y, row in enumerate(rows):
            axes.annotate(
                f"{row.score:.0f}", (row.upper, y), xytext=(6, 0), textcoords="offset points",
                va="center",
            )  # fmt: skip
        axes.invert_yaxis()
        axes.margins(x=0.12)
        axes.tick_params(axis="y", labelsize="large")
        axes.set_xlabel("score (95 % interval); 400 points = 10:1 odds")
        axes.grid(axis="x", alpha=0.3)
    else:
        axes.text(0.5, 0.5, "No arena votes yet", ha="center", va="center", fontsize="large")
        axes.set_axis_off()
    axes.set_title(title, fontsize="x-large")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
