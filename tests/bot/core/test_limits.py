"""Pure parts of the community features: limits, settings parsing, the blocklist, rendering."""

from __future__ import annotations

import pytest

from bot.core.limits import Limited, Limits
from bot.core.policy import Refused, Where, blocked_by, check_rules
from bot.core.settings_options import parse_blocklist, parse_channels, parse_tasks
from bot.discord.cogs.account import removed_summary
from bot.discord.cogs.admin import export_command, settings_changes, stats_lines
from bot.discord.cogs.chat import thread_name
from storage.rows import GuildSettings
from storage.stats import TaskModelStats


def clocked(**kw) -> tuple[Limits, list[float]]:
    now = [100.0]
    return Limits(clock=lambda: now[0], **kw), now


def test_sliding_window_counts_starts_and_says_when():
    limits, now = clocked()
    for step in range(3):
        limits.acquire(1, 10, per_minute=3).release()
        now[0] += 10 * (step + 1)  # starts at 100, 110, 130
    now[0] = 150.0
    with pytest.raises(Limited, match="try again in 10 s") as refused:
        limits.acquire(1, 10, per_minute=3)
    assert refused.value.retry_after_s == pytest.approx(10.0)
    limits.acquire(2, 10, per_minute=3).release()  # another user is not affected
    now[0] = 160.0
    limits.acquire(1, 10, per_minute=3).release()  # the start at 100 left the window
    limits.acquire(3, 10, per_minute=0).release()  # 0 = no per-minute limit
    limits.acquire(3, 10, per_minute=0).release()


def test_one_running_per_user_and_a_guild_cap():
    limits, _ = clocked(guild_concurrency=2)
    first = limits.acquire(1, 10, per_minute=10)
    with pytest.raises(Limited, match="already have a text being written — try again in"):
        limits.acquire(1, 11, per_minute=10)
    second = limits.acquire(2, 10, per_minute=10)
    with pytest.raises(Limited, match="already has 2 texts"):
        limits.acquire(3, 10, per_minute=10)
    limits.acquire(3, 11, per_minute=10).release()  # another guild
    first.release()
    first.release()  # idempotent
    assert limits.running(10) == 1
    limits.acquire(3, 10, per_minute=10).release()
    second.release()
    assert limits.running(10) == 0
    assert limits.acquire(1, None, per_minute=10)  # outside a guild: no guild cap


def test_a_refused_start_takes_nothing():
    limits, _ = clocked(guild_concurrency=1)
    running = limits.acquire(1, 10, per_minute=1)
    with pytest.raises(Limited):
        limits.acquire(2, 10, per_minute=1)
    running.release()
    limits.acquire(2, 10, per_minute=1).release()  # bob's refusal did not count as a start


def test_settings_lists_are_parsed_and_validated():
    assert parse_tasks(" Story, /poem ,story") == ("story", "poem")
    assert parse_tasks("") is None
    with pytest.raises(Refused, match="Unknown task limerick"):
        parse_tasks("story, limerick")
    assert parse_channels("<#12>, 34, <#12>") == (12, 34)
    assert parse_channels(" ") == ()
    with pytest.raises(Refused, match="not a channel"):
        parse_channels("#general")
    assert parse_blocklist("Dragon,  Evil Wizard ,") == ("dragon", "evil wizard")
    changes = settings_changes({"temperature": 0.5, "channels": "", "blocklist": None})
    assert changes == {"temperature": 0.5, "channels": ()}
    with pytest.raises(Refused, match="max_tokens must be from 16 to 1024"):
        settings_changes({"max_tokens": 5000})


def test_blocklist_matches_whole_words_and_phrases_in_any_case():
    rules = ("dragon", "evil wizard")
    assert blocked_by(rules, "A DRAGON!") == "dragon"
    assert blocked_by(rules, "an Evil\n  Wizard came") == "evil wizard"
    assert blocked_by(rules, "dragonfly and wizardry") is None
    assert blocked_by((), "anything") is None


def test_rules_name_what_is_allowed():
    guild = GuildSettings(enabled_tasks=("poem",), channels=(5,), blocklist=("fox",))
    with pytest.raises(Refused, match="Enabled here: /poem"):
        check_rules(guild, "story", Where(1, 2, 5), [])
    with pytest.raises(Refused, match="only in <#5>"):
        check_rules(guild, "poem", Where(1, 2, 6), [])
    check_rules(guild, "poem", Where(1, 2, 99, parent_id=5), ["a cat"])  # a thread of #5
    with pytest.raises(Refused, match="contains `fox`"):
        check_rules(guild, "poem", Where(1, 2, 5), ["A Fox"])


def test_thread_names_fit_discord():
    assert thread_name("  hello\n there ") == "hello there"
    long = thread_name("x" * 300)
    assert len(long) == 100 and long.endswith("…")
    assert thread_name(" ") == "Chat with Muse"


def test_stats_export_and_forget_texts():
    stats = [
        TaskModelStats("poem", "m", 2, 2, ratings=1, thumbs_up=1, mean_latency_ms=1500.0),
        TaskModelStats("story", "a", 1, 1),
        TaskModelStats("story", "b", 1, 0),
    ]
    text = stats_lines(stats)
    assert "**/poem** — 2 generations · 1 ratings · 👍 100% · 1.5 s mean · –" in text
    assert "**/story (a)**" in text and "**/story (b)**" in text
    assert stats_lines([]) == "No generations on this server yet."
    assert (
        export_command("dpo", 7, None) == "muse export --format dpo --guild 7 --out muse-dpo.jsonl"
    )
    assert removed_summary({"generations": 2, "feedback": 0, "users": 1}) == (
        "2 generations, 1 user records"
    )
