"""Rating statistics per task and model, and a PNG chart of ratings per task (matplotlib, Agg)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite

# Counts are SUM(CASE WHEN ... THEN 1 ELSE 0 END): PostgreSQL sums no booleans.
# Edits are counted apart: they are members' texts, neither the model's output nor its speed.
_GENERATIONS_SQL = """
SELECT task, model_id, SUM(CASE WHEN source = 'model' THEN 1 ELSE 0 END),
       SUM(CASE WHEN source = 'model' AND status = 'done' THEN 1 ELSE 0 END),
       AVG(CASE WHEN source = 'model' AND status = 'done' THEN total_ms END),
       SUM(CASE WHEN source = 'model' AND status = 'done' AND total_ms > 0 THEN tokens_out END),
       SUM(CASE WHEN source = 'model' AND status = 'done' AND total_ms > 0 THEN total_ms END),
       SUM(CASE WHEN source = 'edit' THEN 1 ELSE 0 END)
FROM generations
WHERE :guild_id IS NULL OR guild_id = :guild_id
GROUP BY task, model_id
"""

_FEEDBACK_SQL = """
SELECT g.task, g.model_id, COUNT(*),
       SUM(CASE WHEN f.thumbs = 'up' THEN 1 ELSE 0 END),
       SUM(CASE WHEN f.thumbs = 'down' THEN 1 ELSE 0 END),
       SUM(CASE WHEN f.stars = 1 THEN 1 ELSE 0 END), SUM(CASE WHEN f.stars = 2 THEN 1 ELSE 0 END),
       SUM(CASE WHEN f.stars = 3 THEN 1 ELSE 0 END), SUM(CASE WHEN f.stars = 4 THEN 1 ELSE 0 END),
       SUM(CASE WHEN f.stars = 5 THEN 1 ELSE 0 END),
       SUM(CASE WHEN f.verdict = 1 THEN 1 ELSE 0 END),
       SUM(CASE WHEN f.verdict = 0 THEN 1 ELSE 0 END),
       SUM(CASE WHEN f.verdict = -1 THEN 1 ELSE 0 END)
FROM feedback AS f JOIN generations AS g ON g.id = f.generation_id
WHERE g.source = 'model' AND (:guild_id IS NULL OR g.guild_id = :guild_id)
GROUP BY g.task, g.model_id
"""


@dataclass(frozen=True, slots=True)
class TaskModelStats:
    """Figures for one (task, model). Ratings are raters (one row per user per generation).

    `generations` and the ratings are the model's own answers; `edits` counts members'
    corrections (✏️) of them, apart.
    """

    task: str
    model_id: str
    generations: int
    done: int
    ratings: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0
    stars: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    good: int = 0
    neutral: int = 0
    bad: int = 0
    mean_latency_ms: float | None = None
    tokens_per_s: float | None = None
    edits: int = 0

    @property
    def share_up(self) -> float | None:
        """Share of 👍 among thumbs ratings; None without any."""
        thumbs = self.thumbs_up + self.thumbs_down
        return self.thumbs_up / thumbs if thumbs else None


async def task_stats(
    conn: aiosqlite.Connection, guild_id: int | None = None
) -> list[TaskModelStats]:
    """Statistics per (task, model), optionally for one guild, sorted by task then model."""
    params = {"guild_id": guild_id}
    ratings = {
        (row[0], row[1]): row[2:] for row in await conn.execute_fetchall(_FEEDBACK_SQL, params)
    }
    result = []
    for task, model, count, done, latency, tokens, total_ms, edits in await conn.execute_fetchall(
        _GENERATIONS_SQL, params
    ):
        rated = ratings.get((task, model))
        extra = {}
        if rated is not None:
            n, up, down, s1, s2, s3, s4, s5, good, neutral, bad = (int(v or 0) for v in rated)
            extra = dict(
                ratings=n, thumbs_up=up, thumbs_down=down, stars=(s1, s2, s3, s4, s5),
                good=good, neutral=neutral, bad=bad,
            )  # fmt: skip
        result.append(
            TaskModelStats(
                task=task,
                model_id=model,
                generations=int(count or 0),
                done=int(done or 0),
                edits=int(edits or 0),
                mean_latency_ms=latency,
                tokens_per_s=tokens * 1000 / total_ms if tokens and total_ms else None,
                **extra,
            )
        )
    return sorted(result, key=lambda s: (s.task, s.model_id))


@dataclass(frozen=True, slots=True)
class ModelTotals:
    """One model's figures over every task: the per-model view of `/stats` and `muse stats`."""

    model_id: str
    generations: int
    edits: int
    ratings: int
    good: int
    bad: int

    @property
    def share_good(self) -> float | None:
        """Good raters among raters with a verdict (neutral ⭐3 left out)."""
        judged = self.good + self.bad
        return self.good / judged if judged else None


def per_model(stats: Sequence[TaskModelStats]) -> list[ModelTotals]:
    """The stats summed per model, most generations first."""
    totals: dict[str, list[int]] = {}
    for s in stats:
        t = totals.setdefault(s.model_id, [0, 0, 0, 0, 0])
        for i, value in enumerate((s.generations, s.edits, s.ratings, s.good, s.bad)):
            t[i] += value
    rows = [ModelTotals(model, *values) for model, values in totals.items()]
    return sorted(rows, key=lambda m: (-m.generations, m.model_id))


def format_table(stats: Sequence[TaskModelStats]) -> str:
    """A plain-text table for the terminal (`muse stats`): per task and model, then per model."""
    if not stats:
        return "No generations yet."
    header = (
        f"{'task':<10} {'model':<28} {'gens':>6} {'edits':>5} {'ratings':>7} {'up share':>8} "
        f"{'★1..5':<19} {'latency ms':>10} {'tok/s':>6}"
    )
    lines = [header]
    for s in stats:
        share = "-" if s.share_up is None else f"{s.share_up:.0%}"
        latency = "-" if s.mean_latency_ms is None else f"{s.mean_latency_ms:.0f}"
        speed = "-" if s.tokens_per_s is None else f"{s.tokens_per_s:.1f}"
        stars = "/".join(str(n) for n in s.stars)
        lines.append(
            f"{s.task:<10} {s.model_id[-28:]:<28} {s.generations:>6} {s.edits:>5} {s.ratings:>7} "
            f"{share:>8} {stars:<19} {latency:>10} {speed:>6}"
        )
    lines += ["", f"{'model':<39} {'gens':>6} {'edits':>5} {'ratings':>7} {'good share':>10}"]
    for m in per_model(stats):
        good = "-" if m.share_good is None else f"{m.share_good:.0%}"
        lines.append(
            f"{m.model_id[-39:]:<39} {m.generations:>6} {m.edits:>5} {m.ratings:>7} {good:>10}"
        )
    return "\n".join(lines)


def ratings_chart_png(stats: Sequence[TaskModelStats], title: str = "Ratings per task") -> bytes:
    """A PNG of good / neutral / bad raters per task (all models together).

    Uses `matplotlib.figure.Figure` with the Agg canvas directly: no pyplot, no global state,
    safe from any thread.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    per_task: dict[str, list[int]] = {}
    for s in stats:
        counts = per_task.setdefault(s.task, [0, 0, 0])
        counts[0] += s.good
        counts[1] += s.neutral
        counts[2] += s.bad
    tasks = sorted(per_task)
    figure = Figure(figsize=(8, 1.2 + 0.5 * max(len(tasks), 1)), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if not tasks:
        axes.text(0.5, 0.5, "No ratings yet", ha="center", va="center")
        axes.set_axis_off()
    left = [0] * len(tasks)
    for index, (label, color) in enumerate(
        (("good", "#4caf50"), ("neutral", "#bdbdbd"), ("bad", "#e53935"))
    ):
        values = [per_task[task][index] for task in tasks]
        if tasks:
            axes.barh(tasks, values, left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, values, strict=True)]
    if tasks:
        axes.set_xlabel("raters")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.invert_yaxis()
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    axes.set_title(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
