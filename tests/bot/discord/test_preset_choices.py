"""A community's MUSE_PRESETS file reaches the slash commands without code: a choice added to
/poem's form, a new task of the dialogue kind (a screenplay) with the dialogue buttons; more
choices than Discord allows are refused at start. The real model, the emulator, SQLite."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.cli.wiring import presets_from
from bot.discord.client import MuseBot
from generation.backend import Backend
from generation.errors import OptionError
from storage.store import Store
from tests.bot.community_presets import ODE_HINT, many_forms, write_presets
from tests.bot.helpers import make_settings
from tests.discord_emulator import DiscordEmulator, InteractionRecord, run_bot


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def choices(emu: DiscordEmulator, command: str, option: str) -> list[str] | None:
    """The synced choices of `/command option` (None: the command has no such option)."""
    synced = next(c for c in emu.commands() if c["name"] == command)
    found = next((o for o in synced.get("options", []) if o["name"] == option), None)
    return None if found is None else [c["value"] for c in found.get("choices", [])]


async def finished(record: InteractionRecord, marker: str = "muse:rate:") -> InteractionRecord:
    return await record.wait_until(
        lambda i: i.original is not None and any(marker in c for c in i.original.custom_ids()),
        timeout=60,
    )


@contextlib.asynccontextmanager
async def community_bot(
    emu: DiscordEmulator, tmp_path: Path, engine: Backend, presets: Path | None
) -> AsyncIterator[MuseBot]:
    """A MuseBot whose MUSE_PRESETS is `presets` (None: the built-in presets alone)."""
    settings = make_settings(emu, tmp_path / "muse.db", presets_path=str(presets or ""))
    async with Store.open(settings.db_path) as store:
        bot = MuseBot(settings=settings, store=store, engine=engine, presets=presets_from(settings))
        async with run_bot(bot, emu):
            yield bot


async def test_the_built_in_presets_give_the_contracts_choices(
    emu: DiscordEmulator, tmp_path: Path, engine: Backend
):
    async with community_bot(emu, tmp_path, engine, None):
        assert choices(emu, "story", "length") == ["short", "medium", "long"]
        assert choices(emu, "poem", "form") == ["free", "haiku", "sonnet", "limerick"]
        assert choices(emu, "describe", "kind") == ["product", "ad", "social", "news"]
        for command in ("compare", "arena", "leaderboard"):
            assert choices(emu, command, "task") == ["story", "poem", "describe", "generate"]
        assert choices(emu, "dialogue", "task") is None  # one dialogue task: no task option


async def test_a_community_poem_form_is_offered_and_written(
    emu: DiscordEmulator, tmp_path: Path, engine: Backend
):
    async with community_bot(emu, tmp_path, engine, write_presets(tmp_path)):
        assert choices(emu, "poem", "form") == ["free", "ode"]
        options = {"topic": "the sea", "form": "ode"}
        reply = await finished(await emu.slash_command("poem", options, user="alice"))
        assert "AI-generated" in reply.original.content
        refused = await emu.slash_command("poem", {"topic": "x", "form": "haiku"})
        await refused.wait_until(lambda i: i.original is not None)
        assert "form must be one of free, ode, not 'haiku'" in refused.original.content
    ((task, fields, messages),) = rows(
        tmp_path / "muse.db", "SELECT task, fields_json, messages_json FROM generations"
    )
    assert task == "poem" and json.loads(fields)["form"] == "ode"
    assert ODE_HINT in json.loads(messages)[-1]["content"]


async def test_a_community_dialogue_task_gets_the_dialogue_reply_and_buttons(
    emu: DiscordEmulator, tmp_path: Path, engine: Backend
):
    async with community_bot(emu, tmp_path, engine, write_presets(tmp_path)):
        assert choices(emu, "dialogue", "task") == ["dialogue", "screenplay"]
        assert "screenplay" in (choices(emu, "compare", "task") or [])
        options = {"scene": "a bank vault", "characters": "Ana, Ben", "task": "screenplay"}
        scene = await finished(await emu.slash_command("dialogue", options, user="alice"))
        body = scene.original.content
        assert body.startswith(("**Ana:**", "**Ben:**"))  # a cast's lines, speakers in bold
        assert {"muse:continue:1", "muse:branch:1", "muse:script:1"} <= set(
            scene.original.custom_ids()
        )
        more = await finished(
            await emu.press_button(scene.original, "muse:continue:1", user="bob"), "muse:rate:2"
        )
        assert {"muse:continue:2", "muse:branch:2"} <= set(more.original.custom_ids())
        await finished(await emu.press_button(scene.original, "muse:branch:1"), "muse:rate:3")
        script = await emu.press_button(more.original, "muse:script:2")
        await script.wait_until(lambda i: i.original and i.original.attachments)
        files = {a.filename: a for a in script.original.attachments}
        data = json.loads(files["scene-2.json"].text())
        assert data["scene"] == "a bank vault" and data["characters"] == ["Ana", "Ben"]
        speakers = [line["speaker"] for line in data["lines"]]
        compare = await finished(  # a two-take task too: its prompt fills the scene
            await emu.slash_command("compare", {"prompt": "a rooftop", "task": "screenplay"}),
            "muse:compare:",
        )
        assert [e["title"] for e in compare.original.embeds] == ["A", "B"]
        wrong = await emu.slash_command("dialogue", options | {"task": "story"})
        await wrong.wait_until(lambda i: i.original is not None)
        assert "task must be dialogue or screenplay" in wrong.original.content
    db = tmp_path / "muse.db"
    links = rows(db, "SELECT id, parent_id, task, status FROM generations ORDER BY id")
    assert links == [
        (1, None, "screenplay", "done"),
        (2, 1, "screenplay", "done"),
        (3, 1, "screenplay", "done"),
        (4, None, "screenplay", "done"),
        (5, None, "screenplay", "done"),
    ]
    for (take,) in rows(db, "SELECT output FROM generations WHERE id > 3"):
        assert all(line.startswith(("Ana: ", "Ben: ")) for line in take.splitlines())
    # 📄 of the ▶ holds the whole scene: the first reply's lines, then the ▶'s
    first, second = (out for (out,) in rows(db, "SELECT output FROM generations WHERE id < 3"))
    assert first and set(speakers) <= {"Ana", "Ben"}
    assert len(speakers) == len(first.splitlines()) + len(second.splitlines())


async def test_more_choices_than_discord_allows_are_refused_at_start(
    emu: DiscordEmulator, tmp_path: Path, engine: Backend
):
    presets = write_presets(tmp_path, many_forms(26))
    with pytest.raises(OptionError, match="/poem form has 26 choices; Discord allows at most 25"):
        async with community_bot(emu, tmp_path, engine, presets):
            pass
    assert emu.commands() == []  # nothing was synced
