"""Bad input, through the emulator: every command's options drawn by hypothesis (hostile text,
out-of-range numbers, choices a client never sends), hostile generated text, and prompts or
histories longer than the context. Each gets a normal answer or a clear ephemeral error;
nothing crashes, nothing is left "thinking…", and the database stays consistent.

One emulator and one bot serve all the examples of a test (hypothesis runs each example on the
session's event loop, where the fixtures live).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.discord.compare_reply import EMBED_LIMIT, take_embed
from bot.discord.rendering import in_progress, show_links
from bot.discord.splitting import split_message
from generation.engine.local_engine import Engine
from storage.store import approximate_tokens
from tests.bot.community import bot_reply_in, muse, rows
from tests.bot.discord.bad_input import (
    MASKED_LINK,
    MENTIONS,
    NASTY,
    Harness,
    choices,
    floats,
    harness,
    ints,
    optional,
    outside_code,
    texts,
)
from tests.discord_emulator import DiscordEmulator, InteractionRecord

FIXTURE_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
TASKS = ("story", "poem", "dialogue", "describe", "generate", "chat")


@pytest.fixture
async def h(emu: DiscordEmulator, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(emu, tmp_path) as running:
        yield running


def command(name: str, **options: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple]:
    return st.tuples(st.just(name), st.fixed_dictionaries(options))


COMMANDS = st.one_of(
    command("story", prompt=texts(), length=choices("short", "medium", "long")),
    command("poem", topic=texts(), form=choices("free", "haiku", "sonnet", "limerick")),
    command(
        "dialogue",
        scene=texts(),
        characters=st.one_of(texts(), st.just("Smith, Knight"), st.just(" , ,, ")),
        lines=ints(0, 1, 2, 20, 21, -5),
        tone=optional(texts()),
    ),
    command("describe", product=texts(), audience=optional(texts())),
    command(
        "generate",
        prompt=texts(),
        temperature=floats(-1.0, 2.5, 0.0, 2.0, float("nan")),
        max_tokens=ints(0, 15, 16, 1024, 1025, 5000),
    ),
    command("compare", prompt=texts(), task=choices("story", "poem", "describe", "generate")),
    command("chat", message=texts()),
    command("history", count=ints(0, 1, 25, 26, -1)),
    command(
        "settings",
        temperature=floats(-1.0, 2.5, float("nan")),
        max_tokens=ints(0, 16, 1024, 5000),
        per_user_per_minute=ints(-1, 0, 120, 121),
        enabled_tasks=optional(st.one_of(texts(), st.sampled_from(["story, poem", "/chat", ","]))),
        channels=optional(st.one_of(texts(), st.just("<#1>, 2"))),
        blocklist=optional(texts()),
    ),
    command("export", format=choices("sft", "dpo", "kto", "raw"), min_score=ints(0, -1, 2**63)),
    command("privacy", training=choices("allow", "deny")),
)

# The examples the issue names, always run (hypothesis adds its own on top).
NAMED = (
    [
        ("dialogue", {"scene": "a tavern", "characters": "Innkeeper, Stranger", "lines": n})
        for n in (0, 21, -5)
    ]
    + [("generate", {"prompt": "hi", "temperature": t}) for t in (-1.0, 2.5, float("nan"))]
    + [("generate", {"prompt": "hi", "max_tokens": n}) for n in (0, 5000)]
    + [("history", {"count": n}) for n in (0, 26)]
    + [
        ("export", {"format": "raw", "min_score": 10**30}),
        ("export", {"format": "kto", "min_score": -(10**30)}),
        ("settings", {"temperature": float("nan")}),
        ("settings", {"max_tokens": 5000, "per_user_per_minute": -1}),
        ("story", {"prompt": ""}),
        ("story", {"prompt": " \t\n "}),
        ("poem", {"topic": "a" * 6000, "form": "EPIC"}),
        ("chat", {"message": "\u200b\u200c\u200d"}),
        ("chat", {"message": "@everyone <@&123> <@456> ```"}),
        ("describe", {"product": "nul\x00\x01\x1b", "audience": "\u202eevil"}),
        ("compare", {"prompt": "x", "task": "chat"}),
        ("privacy", {"training": "maybe"}),
    ]
)


def with_named(test):
    for name, options in NAMED:
        test = example(cmd=(name, options), in_thread=False)(test)
    return test


async def reset_guild(h: Harness) -> None:
    """Undo whatever a drawn /settings changed, so later examples still reach the engine."""
    keys = ("temperature", "max_tokens", "per_user_per_minute", "enabled_tasks", "channels")
    await h.bot.app.store.update_guild_settings(h.emu.guild.id, **dict.fromkeys(keys), blocklist=())
    await h.bot.app.store.set_opted_out(h.emu.user("alice").id, False)


@settings(max_examples=90, deadline=None, suppress_health_check=FIXTURE_OK)
@with_named
@given(cmd=COMMANDS, in_thread=st.booleans())
async def test_every_command_answers_any_options(h: Harness, cmd: tuple, in_thread: bool):
    name, options = cmd
    user = "manager" if name in ("settings", "export") else "alice"
    channel = None
    if name == "chat" and in_thread and h.emu.threads():
        channel = h.emu.threads()[0]  # the next turn of an existing conversation
    outcome = await h.run(h.emu.slash_command(name, options, user=user, channel=channel))
    if name in ("settings", "privacy"):
        await reset_guild(h)
    if name in ("history", "settings", "export", "privacy"):
        assert outcome.new_generations == 0 and outcome.record.original.ephemeral
    if not outcome.refused and name in TASKS and name != "chat":
        # a normal answer: the finished reply with its buttons, rows `done`
        assert any("muse:rate:" in c for c in outcome.record.original.custom_ids())
    if name == "compare" and not outcome.refused:
        assert outcome.new_generations == 2


async def test_the_named_out_of_range_values_are_refused_clearly(h: Harness):
    """The bot re-validates what Discord sends: each says what the range is, records nothing."""
    for name, options, says in [
        (
            "dialogue",
            {"scene": "s", "characters": "A, B", "lines": 21},
            "lines must be from 2 to 20",
        ),
        ("dialogue", {"scene": "s", "characters": "A, B", "lines": -5}, "lines must be from 2"),
        ("generate", {"prompt": "p", "temperature": 2.5}, "temperature must be from 0 to 2"),
        ("generate", {"prompt": "p", "temperature": float("nan")}, "temperature must be"),
        ("generate", {"prompt": "p", "max_tokens": 5000}, "max_tokens must be from 16 to 1024"),
        ("history", {"count": 26}, "count must be from 1 to 25"),
        ("history", {"count": "abc"}, "count must be a whole number"),  # sent raw
        ("generate", {"prompt": "p", "temperature": "abc"}, "temperature must be a number"),
        ("story", {"prompt": "   "}, "needs prompt"),
        ("story", {"prompt": "p", "length": "epic"}, "length must be one of"),
        ("compare", {"prompt": "p", "task": "chat"}, "task must be"),
        ("privacy", {"training": "maybe"}, "training must be allow or deny"),
    ]:
        outcome = await h.run(h.emu.slash_command(name, options))
        assert outcome.refused and says in outcome.record.original.content, (name, options)
    for options, says in [
        ({"format": "raw", "min_score": 10**30}, "min_score must be"),
        ({"format": "csv"}, "format must be sft, dpo, kto or raw"),
    ]:
        outcome = await h.run(h.emu.slash_command("export", options, user="manager"))
        assert outcome.refused and says in outcome.record.original.content, options
    refused = await h.run(h.emu.slash_command("settings", {"max_tokens": 0}, user="manager"))
    assert "max_tokens must be from 16 to 1024" in refused.record.original.content
    assert h.count("generations") == 0 and h.count("users") == 0
    assert h.rows("SELECT COUNT(*) FROM guild_settings") == [(0,)]


STARS = st.one_of(
    texts(8),
    st.sampled_from(["0", "6", "5", "1", "4⭐", " 3 ", "²", "٣", "-1", "99", "1.5", "⭐⭐⭐"]),
)


@pytest.fixture
async def rated(h: Harness) -> AsyncIterator[tuple[Harness, Any]]:
    """`h` with one finished /story to rate."""
    story = await h.run(h.emu.slash_command("story", {"prompt": "a fox"}))
    yield h, story.record.original


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@example(stars="²", comment=None)
@example(stars="4", comment="a" * 6000)
@example(stars="5", comment="nul\x00 <@456> @everyone ```")
@given(stars=STARS, comment=optional(texts()))
async def test_the_stars_modal_takes_any_fields(rated, stars: str, comment: str | None):
    h, message = rated
    bob = h.emu.user("bob").id
    before = h.rows("SELECT stars, comment FROM feedback WHERE user_id = ?", bob)
    shown = await h.emu.press_button(message, "muse:stars:1", user="bob")
    await shown.wait_callback()
    assert shown.callback_type == 9  # the modal
    fields = {"stars": stars} | ({} if comment is None else {"comment": comment})
    outcome = await h.run(h.emu.submit_modal(shown, fields))
    answer = outcome.record.original
    assert outcome.refused and answer is not None
    after = h.rows("SELECT stars, comment FROM feedback WHERE user_id = ?", bob)
    if answer.content.startswith("Thanks — saved"):
        ((saved_stars, saved_comment),) = after
        assert 1 <= saved_stars <= 5 and answer.content.count("⭐") == saved_stars
        previous = before[0][1] if before else None
        assert saved_comment == ((comment or "").strip() or previous)  # empty keeps the last
    else:
        assert after == before  # refused: nothing recorded
        assert "1 to 5" in answer.content or "comment" in answer.content


# --- hostile generated text -------------------------------------------------------------

OUTPUTS = st.one_of(
    texts(120),
    st.lists(st.sampled_from(NASTY + MENTIONS + ("[x](http://a.b/c)", "word")), max_size=40).map(
        " ".join
    ),
    st.integers(2001, 9000).map(lambda n: ("Sentence number one. " * 500)[:n]),
    st.just("```\n" + "code line\n" * 400 + "```"),
)


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@example(
    output='[click](https://evil.example) and [more](<http://x.example/a?b=c> "t")', task="generate"
)
@example(output="@everyone @here <@&123> <@456> " * 100, task="story")
@example(output="word " * 1000, task="chat")
@example(output="Smith: [click](https://evil.example)\nKnight: <@456> @everyone", task="dialogue")
@example(output="y" * 7000, task="compare")
@given(output=OUTPUTS, task=st.sampled_from(["generate", "story", "dialogue", "compare", "chat"]))
async def test_generated_text_is_sent_safely(h: Harness, output: str, task: str):
    """Mentions ping no one; text over 2,000 characters continues in follow-ups of at most
    2,000; a masked link is shown with its URL (`label (<url>)`), never hidden behind a label."""
    h.engine.texts = [output]
    h.engine.delay_s = 0.0005 if output.count(" ") < 300 else 0.0  # long texts: fewer sleeps
    options = {
        "generate": {"prompt": "p"},
        "story": {"prompt": "p"},
        "dialogue": {"scene": "s", "characters": "Smith, Knight", "lines": 20},
        "compare": {"prompt": "p"},
        "chat": {"message": "hi"},
    }[task]
    outcome = await h.run(h.emu.slash_command(task, options))
    assert not outcome.refused
    shown = [m.content for m in outcome.messages] + [
        e.get("description") or "" for m in outcome.messages for e in m.embeds
    ]
    for text in shown:
        assert not MASKED_LINK.search(outside_code(text)), text[:300]
    if task in ("generate", "story") and len(output) > 2000 and not MASKED_LINK.search(output):
        pieces = [m for m in outcome.messages if not m.ephemeral]
        assert len(pieces) >= 2 and all(len(m.content) <= 2000 for m in pieces)
        # nothing lost (a code block cut in two is closed and reopened at the cut)
        shown = "".join("".join(m.content for m in pieces).split()).replace("``````", "")
        assert "".join(output.split()) in shown


@settings(max_examples=300, deadline=None)
@example(text="```" + "a" * 6000, limit=1950)
@example(text="```py\n" + "    x = 1\n" * 500 + "```", limit=1950)
@example(text="```\n" + "[x](https://e.example) " * 300 + "\n```", limit=1900)
@example(text="](http://" * 700, limit=1900)
@given(text=OUTPUTS, limit=st.integers(20, 2000))
def test_splitting_and_links_hold_for_any_text(text: str, limit: int):
    """Pure: pieces within the limit, always ending (a fence before a 6,000-letter word once
    looped forever), no word lost; `show_links` leaves no masked link outside code."""
    pieces = split_message(text, limit)
    assert all(len(piece) <= limit for piece in pieces)
    joined = "".join("".join(pieces).split())
    if "`" not in text:  # without code blocks, nothing is added either
        assert joined == "".join(text.split())
    else:  # a cut block is closed and reopened: only fences are added
        assert set("".join(text.split())) <= set(joined) | {"`"}
    shown = show_links(text)
    assert not MASKED_LINK.search(outside_code(shown)) and show_links(shown) == shown
    progress = in_progress(text, limit)
    assert len(progress) <= limit + 3 and not MASKED_LINK.search(outside_code(progress))
    embed = take_embed("A", text).description or ""
    assert len(embed) <= EMBED_LIMIT and not MASKED_LINK.search(outside_code(embed))


# --- longer than the context, with the real model ------------------------------------------


async def slowly_finished(record: InteractionRecord, marker: str = "muse:rate:"):
    """`finished`, with time for a long prompt's prefill on a busy machine."""
    await record.wait_until(
        lambda i: i.original is not None and any(marker in c for c in i.original.custom_ids()),
        timeout=180,
    )
    return await record.wait_finished(timeout=30)


async def test_a_6000_character_prompt_succeeds_with_the_real_model(
    emu: DiscordEmulator, tmp_path: Path, engine: Engine
):
    db = tmp_path / "muse.db"
    prompt = ("The lighthouse keeper counted the ships. " * 150)[:6000]
    async with muse(emu, db, engine, max_tokens=16):
        reply = await slowly_finished(await emu.slash_command("generate", {"prompt": prompt}))
        assert reply.original.content.strip()
    ((status, fields, tokens_in),) = rows(
        db, "SELECT status, fields_json, tokens_in FROM generations"
    )
    assert status == "done" and json.loads(fields)["prompt"] == prompt and tokens_in > 1000


async def test_a_chat_history_over_the_budget_keeps_the_newest_turns(
    emu: DiscordEmulator, tmp_path: Path, engine: Engine
):
    """A thread whose history far exceeds the context budget: the oldest turns are dropped,
    the newest kept, and the real model answers."""
    db = tmp_path / "muse.db"
    async with muse(emu, db, engine, max_tokens=16) as bot:
        await emu.slash_command("chat", {"message": "Hello there."})
        thread = await emu.wait_for(lambda: emu.threads() and emu.threads()[0])
        await bot_reply_in(emu, thread)
        conversation = await bot.app.store.get_conversation(thread.id)
        alice = emu.user("alice").id
        for n in range(40):  # ~40 × 250 approximate tokens, far over the 2,048 budget
            said = f"turn {n:02d} " + "and the river kept running " * 36
            turn = await bot.app.store.record_generation(
                user_id=alice,
                task="chat",
                messages=[{"role": "user", "content": said}],
                params={},
                model_id="seeded",
                conversation_id=conversation.id,
                guild_id=emu.guild.id,
                channel_id=thread.id,
            )
            await bot.app.store.finish_generation(
                turn, f"reply {n:02d} " + "yes " * 20, "stop", 1, 1, 1.0, 1.0
            )
        reply = await slowly_finished(
            await emu.slash_command("chat", {"message": "What did we say last?"}, channel=thread),
            "muse:rate:42",
        )
        assert reply.original.content.strip()
    ((status, messages_json),) = rows(
        db, "SELECT status, messages_json FROM generations WHERE id = 42"
    )
    sent = json.loads(messages_json)
    assert status == "done" and sent[-1]["content"] == "What did we say last?"
    contents = " ".join(m["content"] for m in sent)
    assert "turn 39" in contents and "reply 39" in contents  # the newest turns are kept
    assert "turn 00" not in contents and "Hello there." not in contents  # the oldest dropped
    assert sum(approximate_tokens(m["content"]) for m in sent) <= 2048


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("story", {"prompt": "@everyone <@&123> <@456> ```py\nx\n``` \u202eevil\u202c \x00"}),
        ("dialogue", {"scene": "e\u0301\u0302 \u200b", "characters": "\u200b, Knight", "lines": 2}),
    ],
)
async def test_hostile_prompts_with_the_real_model(
    emu: DiscordEmulator, tmp_path: Path, engine: Engine, name: str, options: dict[str, Any]
):
    async with harness(emu, tmp_path, max_tokens=16) as h:
        h.bot.app.engine, h.settle_timeout_s = engine, 120.0
        outcome = await h.run(emu.slash_command(name, options))
        assert not outcome.refused
        assert any("muse:rate:1" in c for c in outcome.record.original.custom_ids())
    assert rows(tmp_path / "muse.db", "SELECT status FROM generations") == [("done",)]
