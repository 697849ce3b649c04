"""Statistics per task and model, per guild, and the ratings chart."""

from __future__ import annotations

import pytest

from storage.stats import TaskModelStats, format_table, ratings_chart_png
from storage.store import Store

PNG = b"\x89PNG\r\n\x1a\n"


async def test_stats_per_task_and_model(store: Store, rated, make_generation) -> None:
    slow = await make_generation(user_id=9, model_id="other-model", guild_id=200)
    await store.record_feedback(slow, 1, thumbs="down")
    stats = {(s.task, s.model_id): s for s in await store.stats()}
    assert sorted(stats) == [
        ("describe", "smollm2-135m"), ("poem", "smollm2-135m"), ("story", "other-model"),
        ("story", "smollm2-135m"),
    ]  # fmt: skip
    story = stats["story", "smollm2-135m"]
    # g1 g2 g4 g5 g6 g9 g10 g11; g6 failed, the rest done (g5 deleted after finishing).
    assert (story.generations, story.done) == (8, 6)
    # g1: up, ⭐5; g2: down; g4: up; g5: up; g6: up; g9: ⭐3; g10: up; g11: up
    assert story.ratings == 9
    assert (story.thumbs_up, story.thumbs_down) == (6, 1)
    assert story.share_up == pytest.approx(6 / 7)
    assert story.stars == (0, 0, 1, 0, 1)
    assert (story.good, story.neutral, story.bad) == (7, 1, 1)
    assert story.mean_latency_ms == pytest.approx(2000.0)
    assert story.tokens_per_s == pytest.approx(20.0)  # 40 tokens in 2 s
    other = stats["story", "other-model"]
    assert (other.ratings, other.thumbs_down, other.share_up) == (1, 1, 0.0)

    in_guild = await store.stats(guild_id=200)
    assert [(s.task, s.model_id, s.generations, s.ratings) for s in in_guild] == [
        ("poem", "smollm2-135m", 1, 1), ("story", "other-model", 1, 1),
    ]  # fmt: skip


async def test_stats_without_ratings(store: Store, make_generation) -> None:
    await make_generation(status="running")
    (only,) = await store.stats()
    assert (only.generations, only.done, only.ratings, only.share_up) == (1, 0, 0, None)
    assert (only.mean_latency_ms, only.tokens_per_s) == (None, None)
    assert "story" in format_table([only])
    assert await store.stats(guild_id=12345) == []


def test_chart_is_a_png() -> None:
    stats = [
        TaskModelStats("story", "m", 3, 3, ratings=4, good=2, neutral=1, bad=1),
        TaskModelStats("poem", "m", 1, 1, ratings=1, good=1),
    ]
    png = ratings_chart_png(stats)
    assert png.startswith(PNG) and len(png) > 2000
    empty = ratings_chart_png([])
    assert empty.startswith(PNG)
    assert format_table([]) == "No generations yet."


async def test_edits_are_counted_apart(store: Store, make_generation) -> None:
    story = await make_generation(user_id=1, guild_id=100)
    poem = await make_generation(user_id=1, task="poem", model_id="other-model", guild_id=200)
    await store.record_feedback(story, 2, thumbs="up")
    first = await store.record_edit(story, 2, "Better.", guild_id=100, channel_id=1)
    await store.record_edit(first, 3, "Best.", guild_id=100, channel_id=1)
    await store.record_edit(poem, 3, "A better poem.", guild_id=200, channel_id=2)
    await store.record_feedback(first, 4, thumbs="down")  # a rating of a member's text
    stats = {(s.task, s.model_id): s for s in await store.stats()}
    story_stats = stats["story", "smollm2-135m"]
    assert (story_stats.generations, story_stats.done, story_stats.edits) == (1, 1, 2)
    assert (story_stats.ratings, story_stats.thumbs_up, story_stats.thumbs_down) == (1, 1, 0)
    assert story_stats.mean_latency_ms == pytest.approx(2000.0)
    assert story_stats.tokens_per_s == pytest.approx(20.0)
    assert (stats["poem", "other-model"].generations, stats["poem", "other-model"].edits) == (1, 1)
    assert [(s.task, s.edits) for s in await store.stats(guild_id=200)] == [("poem", 1)]
    table = format_table(await store.stats())
    assert "edits" in table.splitlines()[0]
    assert ratings_chart_png(await store.stats()).startswith(PNG)


def test_per_model_sums_every_task_of_a_model():
    from storage.stats import TaskModelStats, format_table, per_model

    stats = [
        TaskModelStats("story", "base", 4, 4, ratings=3, good=2, bad=1),
        TaskModelStats("poem", "base", 2, 2, ratings=1, good=0, bad=1, edits=1),
        TaskModelStats("story", "house-style", 5, 5, ratings=4, good=4, bad=0),
    ]
    base, tuned = per_model(stats)  # most generations first
    assert (base.model_id, base.generations, base.edits, base.ratings) == ("base", 6, 1, 4)
    assert base.share_good == 0.5 and tuned.share_good == 1.0
    assert "house-style" in format_table(stats).split("\n\n")[1]
