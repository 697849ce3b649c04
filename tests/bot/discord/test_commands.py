"""End to end with the real default model, the emulator and a real SQLite file."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from generation.engine.local_engine import Engine
from tests.bot import script_grammar_ink as ink
from tests.bot import script_grammar_yarn as yarn
from tests.bot.helpers import BotFactory
from tests.discord_emulator import DiscordEmulator, InteractionRecord

FOOTER = re.compile(r"-# \S+ · \d+ tokens · \d+\.\d s · AI-generated$")


def rows(db: Path, sql: str, *args: Any) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


async def finished(record: InteractionRecord, marker: str = "muse:rate:") -> InteractionRecord:
    """Wait until the reply carries its finished buttons."""
    return await record.wait_until(
        lambda i: i.original is not None and any(marker in c for c in i.original.custom_ids()),
        timeout=60,
    )


async def ephemeral_answer(record: InteractionRecord) -> str:
    await record.wait_until(lambda i: i.original is not None or i.followups)
    message = record.original or record.followups[0]
    assert message.ephemeral
    return message.content


async def test_commands_are_synced_to_the_guild(
    emu: DiscordEmulator, start_bot: BotFactory, engine: Engine
):
    async with start_bot(engine):
        synced = {c["name"]: [o["name"] for o in c.get("options", [])] for c in emu.commands()}
    assert synced == {
        "story": ["prompt", "length"],
        "poem": ["topic", "form"],
        "dialogue": ["scene", "characters", "lines", "tone"],
        "describe": ["product", "audience", "kind"],
        "character": ["concept", "setting"],
        "quest": ["premise", "setting"],
        "persona": ["name", "prompt", "clear"],
        "model": ["name"],
        "arena": ["prompt", "task"],
        "leaderboard": ["task"],
        "loop": ["status", "set", "tune", "rollback"],
        "generate": ["prompt", "temperature", "max_tokens"],
        "compare": ["prompt", "task"],
        "chat": ["message"],
        "history": ["count"],
        "stats": [],
        "export": ["format", "min_score"],
        "forget": [],
        "privacy": ["training"],
        "settings": [
            "temperature",
            "max_tokens",
            "per_user_per_minute",
            "enabled_tasks",
            "channels",
            "blocklist",
            "reset",
        ],
        "help": [],
    }
    dialogue = next(c for c in emu.commands() if c["name"] == "dialogue")
    lines = next(o for o in dialogue["options"] if o["name"] == "lines")
    assert (lines["min_value"], lines["max_value"]) == (2, 20)
    assert emu.commands(global_=True) == []


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("story", {"prompt": "a lighthouse keeper", "length": "short"}),
        ("poem", {"topic": "rain", "form": "haiku"}),
        ("dialogue", {"scene": "a tavern", "characters": "Innkeeper, Stranger", "lines": 2}),
        ("describe", {"product": "a solar lamp", "audience": "campers"}),
        ("generate", {"prompt": "Name three colours.", "temperature": 0.5, "max_tokens": 16}),
    ],
)
async def test_each_command_streams_a_reply_with_footer_buttons_and_a_done_row(
    emu: DiscordEmulator,
    start_bot: BotFactory,
    engine: Engine,
    tmp_path: Path,
    command: str,
    options: dict[str, Any],
):
    async with start_bot(engine):
        reply = await finished(await emu.slash_command(command, options, user="alice"))
        assert reply.deferred and reply.callback_ms < 3000
        original = reply.original
        assert FOOTER.search(original.content)
        assert original.edits[0].content != original.content  # streamed, then finished
        assert {"muse:rate:1:up", "muse:rate:1:down", "muse:stars:1", "muse:regen:1"} <= set(
            original.custom_ids()
        )
        notice = await reply.wait_until(lambda i: i.followups)
        assert "/privacy" in notice.followups[-1].content and notice.followups[-1].ephemeral
    ((status, task, params, message_id),) = rows(
        tmp_path / "muse.db", "SELECT status, task, params_json, message_id FROM generations"
    )
    assert (status, task, message_id) == ("done", command, original.id)
    assert "seed" in json.loads(params)


async def test_votes_stars_regenerate_and_restart(
    emu: DiscordEmulator, start_bot: BotFactory, engine: Engine, tmp_path: Path
):
    db = tmp_path / "muse.db"
    async with start_bot(engine):
        story = await finished(await emu.slash_command("story", {"prompt": "a fox"}, user="alice"))
        original = story.original
        up = await emu.press_button(original, "muse:rate:1:up", user="bob")
        assert await ephemeral_answer(up) == "Thanks — saved 👍"
        down = await emu.press_button(original, "muse:rate:1:down", user="bob")  # changes it
        assert await ephemeral_answer(down) == "Thanks — saved 👎"

        shown = await emu.press_button(original, "muse:stars:1", user="alice")
        await shown.wait_callback()
        assert shown.callback_type == 9
        bad = await emu.submit_modal(shown, {"stars": "9"})
        assert "1 to 5" in await ephemeral_answer(bad)
        reopened = await emu.press_button(original, "muse:stars:1", user="alice")
        await reopened.wait_callback()
        good = await emu.submit_modal(reopened, {"stars": "4", "comment": "lovely fox"})
        assert await ephemeral_answer(good) == "Thanks — saved ⭐⭐⭐⭐"

        regen = await finished(
            await emu.press_button(original, "muse:regen:1", user="bob"), "muse:rate:2"
        )
        assert regen.original.id != original.id and FOOTER.search(regen.original.content)
    feedback = rows(db, "SELECT user_id, thumbs, stars, comment FROM feedback ORDER BY user_id")
    alice, bob = emu.user("alice").id, emu.user("bob").id
    assert sorted(feedback) == sorted([(bob, "down", None, None), (alice, None, 4, "lovely fox")])
    parent, user, seed_1, seed_2 = rows(
        db,
        "SELECT b.parent_id, b.user_id, json_extract(a.params_json, '$.seed'),"
        " json_extract(b.params_json, '$.seed') FROM generations a, generations b"
        " WHERE a.id = 1 AND b.id = 2",
    )[0]
    assert (parent, user) == (1, bob) and seed_1 != seed_2

    async with start_bot(engine):  # a restart: the old message's buttons still work
        again = await emu.press_button(original, "muse:rate:1:up", user="moderator")
        assert await ephemeral_answer(again) == "Thanks — saved 👍"
        gone = await emu.press_button(regen.original, "muse:delete:2", user="bob")
        assert await ephemeral_answer(gone) == "🗑️ Deleted."
        late = await emu.press_button(regen.original, "muse:rate:2:up", user="alice")
        assert "deleted or forgotten" in await ephemeral_answer(late)
    assert rows(db, "SELECT status FROM generations WHERE id = 2") == [("deleted",)]
    assert (emu.user("moderator").id, "up") in rows(db, "SELECT user_id, thumbs FROM feedback")


async def test_dialogue_continue_branch_and_script(
    emu: DiscordEmulator, start_bot: BotFactory, engine: Engine, tmp_path: Path
):
    options = {"scene": "a forge", "characters": "Smith, Knight", "lines": 2, "tone": "gruff"}
    async with start_bot(engine):
        scene = await finished(await emu.slash_command("dialogue", options, user="alice"))
        body = scene.original.content
        assert body.startswith("**Smith:**") or body.startswith("**Knight:**")
        assert {"muse:continue:1", "muse:branch:1", "muse:script:1"} <= set(
            scene.original.custom_ids()
        )
        more = await finished(
            await emu.press_button(scene.original, "muse:continue:1", user="bob"), "muse:rate:2"
        )
        assert FOOTER.search(more.original.content)
        branch = await finished(
            await emu.press_button(scene.original, "muse:branch:1"), "muse:rate:3"
        )
        assert branch.original.content.count("\n") >= 1
        script = await emu.press_button(scene.original, "muse:script:1")
        await script.wait_until(lambda i: i.original and i.original.attachments)
        files = {a.filename: a for a in script.original.attachments}
        names = {"scene-1.json", "scene-1.txt", "scene-1.yarn", "scene-1.ink"}
        assert script.original.ephemeral and set(files) == names
        data = json.loads(files["scene-1.json"].text())
        assert data["characters"] == ["Smith", "Knight"] and data["scene"] == "a forge"
        assert files["scene-1.txt"].text().startswith("Scene: a forge")
        # 🔀's line is the scene's one option, in both game formats (each parsed by its grammar)
        yarn_scene = yarn.plain_scene(files["scene-1.yarn"].text())
        ink_scene = ink.plain_scene(files["scene-1.ink"].text())
        assert len(yarn_scene.options) == len(ink_scene.choices) == len(data["options"]) == 1
        assert yarn_scene.lines == ink_scene.lines and yarn_scene.lines
    links = rows(tmp_path / "muse.db", "SELECT id, parent_id, status FROM generations ORDER BY id")
    assert links == [(1, None, "done"), (2, 1, "done"), (3, 1, "done")]


async def test_compare_shows_two_takes_and_records_votes(
    emu: DiscordEmulator, start_bot: BotFactory, engine: Engine, tmp_path: Path
):
    async with start_bot(engine):
        compare = await finished(
            await emu.slash_command("compare", {"prompt": "a city at night", "task": "poem"}),
            "muse:compare:",
        )
        assert [e["title"] for e in compare.original.embeds] == ["A", "B"]
        assert [b["label"] for b in compare.original.buttons()] == [
            "A is better",
            "B is better",
            "Tie",
        ]
        vote = await emu.press_button(compare.original, "muse:compare:1:2:A", user="bob")
        assert await ephemeral_answer(vote) == "Thanks — saved (A is better)"
        change = await emu.press_button(compare.original, "muse:compare:1:2:tie", user="bob")
        assert await ephemeral_answer(change) == "Thanks — saved (a tie)"
    db = tmp_path / "muse.db"
    assert rows(db, "SELECT generation_a_id, generation_b_id, winner FROM comparisons") == [
        (1, 2, "tie")
    ]
    assert rows(db, "SELECT status FROM generations") == [("done",), ("done",)]


async def test_mentions_in_the_output_ping_no_one(
    emu: DiscordEmulator, start_bot: BotFactory, engine: Engine
):
    async with start_bot(engine):
        prompt = "Repeat exactly, nothing else: @everyone @here <@1>"
        reply = await finished(await emu.slash_command("generate", {"prompt": prompt}))
        await reply.wait_finished()
        assert reply.messages and all(m.pings_no_one for m in reply.messages)
        assert all(v.allowed_mentions == {"parse": []} for v in reply.original.edits)
