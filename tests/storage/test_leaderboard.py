"""The arena leaderboard: Bradley–Terry scores, bootstrap intervals, matrix, table and chart."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from storage.leaderboard import (
    Leaderboard,
    LeaderboardRow,
    Vote,
    build_leaderboard,
    fit_strengths,
    format_table,
    leaderboard_chart_png,
)

PNG = b"\x89PNG\r\n\x1a\n"


def votes_of(a: str, b: str, wins: int, losses: int, ties: int = 0) -> list[Vote]:
    """`a` beats `b` `wins` times, loses `losses` times, ties `ties` times."""
    return (
        [Vote(a, b, "A")] * wins + [Vote(b, a, "A")] * losses + [Vote(a, b, "tie")] * ties
    )  # the losses written from b's side, so both orientations are exercised


def simulate(rng: np.random.Generator, true: dict[str, float], count: int) -> list[Vote]:
    """`count` votes between random pairs, each won with Elo odds of the true scores."""
    names = list(true)
    votes = []
    for _ in range(count):
        a, b = rng.choice(len(names), size=2, replace=False)
        gap = true[names[a]] - true[names[b]]
        a_wins = rng.random() < 1 / (1 + 10 ** (-gap / 400))
        votes.append(Vote(names[a], names[b], "A" if a_wins else "B"))
    return votes


def scores(board: Leaderboard) -> dict[str, float]:
    return {row.model: row.score for row in board.rows}


def centred(true: dict[str, float]) -> dict[str, float]:
    """True scores on the board's scale: mean 1000."""
    mean = sum(true.values()) / len(true)
    return {name: 1000 + value - mean for name, value in true.items()}


# 1. Two models: the MLE odds are the ratio of wins, which gives the gap in closed form.


@pytest.mark.parametrize(
    ("wins", "losses", "ties", "odds"),
    [(30, 10, 0, 3.0), (10, 30, 0, 1 / 3), (12, 6, 4, 14 / 8), (5, 5, 10, 1.0)],
)
def test_two_models_gap_is_log_odds(wins: int, losses: int, ties: int, odds: float) -> None:
    board = build_leaderboard(votes_of("a", "b", wins, losses, ties), rounds=0)
    got = scores(board)
    # 400·log10(3) = 190.85; a tie is half a win each: (w + t/2) / (l + t/2).
    assert got["a"] - got["b"] == pytest.approx(400 * math.log10(odds), abs=0.5)
    assert (got["a"] + got["b"]) / 2 == pytest.approx(1000)


def test_gap_for_30_to_10_is_190_85() -> None:
    got = scores(build_leaderboard(votes_of("a", "b", 30, 10), rounds=0))
    assert got["a"] - got["b"] == pytest.approx(190.85, abs=0.5)


def zermelo(wins: np.ndarray, iterations: int = 20_000) -> np.ndarray:
    """Log strengths by the plain MM iteration (Zermelo 1929, Hunter 2004), mean zero."""
    games = wins + wins.T
    strength = np.ones(len(wins))
    for _ in range(iterations):
        strength = wins.sum(axis=1) / (games / (strength[:, None] + strength)).sum(axis=1)
        strength /= np.exp(np.log(strength).mean())
    return np.log(strength)


def test_newton_fit_agrees_with_the_mm_iteration() -> None:
    rng = np.random.default_rng(0)
    wins = rng.poisson(rng.uniform(0.5, 5, (4, 5, 5))).astype(float)
    wins[:, range(5), range(5)] = 0
    theta = fit_strengths(wins, prior=1e-9)
    for fitted, round_wins in zip(theta, wins, strict=True):
        assert fitted - fitted.mean() == pytest.approx(zermelo(round_wins), abs=1e-5)


# 2. Three models of known strengths 4 : 2 : 1, many votes.


def test_three_models_recover_known_strengths() -> None:
    step = 400 * math.log10(2)  # 120.4 points per doubling of strength
    true = {"strong": 2 * step, "middle": step, "weak": 0.0}
    votes = simulate(np.random.default_rng(7), true, 30_000)
    got = scores(build_leaderboard(votes, rounds=20))
    # About 10 000 votes a pair: a standard error of some 2.5 points per gap.
    assert got["strong"] - got["middle"] == pytest.approx(step, abs=8)
    assert got["middle"] - got["weak"] == pytest.approx(step, abs=8)
    assert got["strong"] - got["weak"] == pytest.approx(2 * step, abs=8)


# 3. The 95 % intervals hold the truth about 95 % of the time.


def test_bootstrap_interval_coverage() -> None:
    true = centred({"a": 1080.0, "b": 1000.0, "c": 940.0})
    rng = np.random.default_rng(11)
    covered = total = 0
    for dataset in range(100):
        board = build_leaderboard(simulate(rng, true, 150), rounds=200, seed=dataset)
        for row in board.rows:
            total += 1
            covered += row.lower <= true[row.model] <= row.upper
    coverage = covered / total
    # Measured: 0.943 (283 of 300 model intervals over 100 data sets of 150 votes); over
    # 1000 data sets, 0.94 for these strengths and 0.93–0.94 for others tried.
    assert 0.85 <= coverage <= 0.99, coverage


# 4. More votes, narrower intervals.


def test_intervals_shrink_with_more_votes() -> None:
    true = {"a": 1050.0, "b": 950.0}
    rng = np.random.default_rng(3)

    def width(count: int) -> float:
        board = build_leaderboard(simulate(rng, true, count), rounds=300)
        return float(np.mean([row.upper - row.lower for row in board.rows]))

    few, many = width(40), width(400)
    assert few >= 2 * many, (few, many)  # √10 ≈ 3.2 expected


# 5. Same votes and seed, same table; another seed moves only the intervals.


def test_same_votes_and_seed_give_the_same_table() -> None:
    votes = simulate(np.random.default_rng(5), {"a": 1100.0, "b": 1000.0, "c": 950.0}, 120)
    first = build_leaderboard(votes, seed=1)
    assert build_leaderboard(votes, seed=1).as_json() == first.as_json()
    assert build_leaderboard(list(reversed(votes)), seed=1).as_json() == first.as_json()
    other = build_leaderboard(votes, seed=2)
    assert scores(other) == scores(first)
    assert [(r.lower, r.upper) for r in other.rows] != [(r.lower, r.upper) for r in first.rows]


# 6. Edge cases.


def test_no_votes_and_self_votes_give_an_empty_board() -> None:
    for votes in ([], [Vote("solo", "solo", "A"), Vote("solo", "solo", "tie")]):
        board = build_leaderboard(votes)
        assert (board.rows, board.matrix, board.as_json()) == ([], {}, [])
        assert format_table(board) == "No arena votes yet."


def test_self_votes_are_ignored_beside_real_ones() -> None:
    plain = build_leaderboard(votes_of("a", "b", 3, 2))
    noisy = build_leaderboard([*votes_of("a", "b", 3, 2), Vote("a", "a", "A")])
    assert noisy.as_json() == plain.as_json()
    assert noisy.rows[0].votes == 5


def test_unbeaten_and_winless_models_get_finite_scores() -> None:
    votes = [*votes_of("champ", "b", 6, 0), *votes_of("champ", "c", 4, 0, 1)]
    votes += [*votes_of("b", "c", 5, 3), *votes_of("b", "loser", 4, 0)]
    board = build_leaderboard(votes)
    assert [row.model for row in board.rows] == ["champ", "b", "c", "loser"]
    for row in board.rows:
        assert all(map(math.isfinite, (row.score, row.lower, row.upper)))
        assert row.lower <= row.score <= row.upper
    assert board.rows[0].win_rate == pytest.approx(10.5 / 11)
    assert board.rows[-1].win_rate == 0.0


def test_disconnected_groups_keep_their_inner_gaps() -> None:
    votes = [*votes_of("a", "b", 30, 10), *votes_of("x", "y", 10, 10, 4)]
    got = scores(build_leaderboard(votes, rounds=50))
    assert got["a"] - got["b"] == pytest.approx(190.85, abs=0.5)
    assert got["x"] - got["y"] == pytest.approx(0, abs=0.5)
    assert sum(got.values()) / 4 == pytest.approx(1000)


def test_a_single_pair_single_vote() -> None:
    board = build_leaderboard([Vote("a", "b", "B")])
    assert [row.model for row in board.rows] == ["b", "a"]
    assert all(math.isfinite(row.score) for row in board.rows)


def test_rejects_an_unknown_winner_and_negative_rounds() -> None:
    with pytest.raises(ValueError, match="winner"):
        Vote("a", "b", "C")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rounds"):
        build_leaderboard([Vote("a", "b", "A")], rounds=-1)


# 7. Matrix, win rates, JSON, table and chart on a small hand-made example.


def small_example() -> Sequence[Vote]:
    # a–b: a wins twice, b once, one tie; b–c: b wins once; a–a: ignored.
    return [
        Vote("a", "b", "A"),
        Vote("b", "a", "B"),
        Vote("a", "b", "B"),
        Vote("b", "a", "tie"),
        Vote("c", "b", "B"),
        Vote("a", "a", "B"),
    ]


def test_matrix_and_win_rates_by_hand() -> None:
    board = build_leaderboard(small_example(), rounds=50)
    rows = {row.model: row for row in board.rows}
    assert {name: row.votes for name, row in rows.items()} == {"a": 4, "b": 5, "c": 1}
    assert rows["a"].win_rate == pytest.approx(2.5 / 4)
    assert rows["b"].win_rate == pytest.approx(2.5 / 5)  # 1 win + ½ tie over a, 1 win over c
    assert rows["c"].win_rate == 0.0
    assert board.matrix == {
        "a": {"a": None, "b": pytest.approx(0.625), "c": None},
        "b": {"a": pytest.approx(0.375), "b": None, "c": 1.0},
        "c": {"a": None, "b": 0.0, "c": None},
    }
    assert list(board.matrix) == [row.model for row in board.rows]
    assert [row.model for row in board.rows] == ["a", "b", "c"]


def test_as_json_keys_and_order() -> None:
    board = build_leaderboard(small_example(), rounds=50)
    rows = board.as_json()
    assert [row["model"] for row in rows] == ["a", "b", "c"]
    keys = {"model", "score", "lower", "upper", "votes", "win_rate"}
    assert all(set(row) == keys for row in rows)
    assert rows[0]["score"] == round(board.rows[0].score, 1)
    assert rows[1]["win_rate"] == 0.5


def test_table_lists_every_model() -> None:
    table = format_table(build_leaderboard(small_example(), rounds=50))
    lines = table.splitlines()
    assert "95% interval" in lines[0]
    assert [line.split()[1] for line in lines[1:]] == ["a", "b", "c"]
    assert "62.5%" in lines[1]


def test_chart_is_a_png_with_and_without_votes() -> None:
    assert leaderboard_chart_png(build_leaderboard(small_example()), "Arena").startswith(PNG)
    assert leaderboard_chart_png(build_leaderboard([]), "Arena").startswith(PNG)


def test_chart_draws_an_interval_that_misses_its_score() -> None:
    row = LeaderboardRow("odd", score=1000.0, lower=1010.0, upper=1050.0, votes=3, win_rate=0.5)
    assert leaderboard_chart_png(Leaderboard(rows=[row], matrix={}), "Arena").startswith(PNG)
