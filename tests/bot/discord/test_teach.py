"""Teach Muse through the emulator: ✏️ edits become training rows, channel personas, the game
and content presets, and texts the token limit cut (replaying engine, real SQLite file)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import datasets

from storage.export import ExportFilters
from tests.bot.community import answered, bot_reply_in, ephemeral, finished, muse, refusal, rows
from tests.bot.fakes import ReplayEngine
from tests.discord_emulator import DiscordEmulator

STORY = "The fox found a key. It opened the old mill. Inside, a lamp was still warm"


def text_inputs(modal: dict[str, Any]) -> list[dict[str, Any]]:
    """The text inputs of a modal as the bot sent it (in action rows or labels)."""
    found, todo = [], list(modal.get("components", []))
    while todo:
        component = todo.pop(0)
        if component.get("type") == 4:
            found.append(component)
        todo += component.get("components", [])
        if isinstance(component.get("component"), dict):
            todo.append(component["component"])
    return found


async def export_rows(bot, fmt: str, path: Path) -> list[dict[str, Any]]:
    with path.open("w", encoding="utf-8") as out:
        await bot.app.store.export(fmt, out, ExportFilters())
    text = await asyncio.to_thread(path.read_text, encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


async def test_an_edit_is_prefilled_saved_posted_and_exported(emu: DiscordEmulator, tmp_path):
    engine = ReplayEngine(["Once a fox met a crow. The end."])
    async with muse(emu, tmp_path / "muse.db", engine) as bot:
        story = await finished(await emu.slash_command("story", {"prompt": "a fox"}, user="alice"))
        assert "muse:edit:1" in story.original.custom_ids()
        shown = await emu.press_button(story.original, "muse:edit:1", user="bob")
        await shown.wait_callback()
        assert shown.callback_type == 9  # a modal
        (box,) = text_inputs(shown.modal)
        assert box["value"] == "Once a fox met a crow. The end." and box["max_length"] == 4000

        same = await emu.submit_modal(shown, {"text": "Once a fox met a crow. The end."})
        assert (await ephemeral(same)).content == "Nothing was saved: the text is unchanged."
        again = await emu.press_button(story.original, "muse:edit:1", user="bob")
        await again.wait_callback()
        empty = await emu.submit_modal(again, {"text": "   "})
        assert (await ephemeral(empty)).content == "Nothing was saved: the improved text was empty."
        assert rows(tmp_path / "muse.db", "SELECT COUNT(*) FROM generations") == [(1,)]

        better = "Once a clever fox met a proud crow, and tricked it out of its cheese."
        again = await emu.press_button(story.original, "muse:edit:1", user="bob")
        await again.wait_callback()
        posted = await emu.submit_modal(again, {"text": better})
        reply = await answered(posted)
        assert not reply.ephemeral and reply.content.startswith("✏️ Improved by <@")
        assert better in reply.content and "muse:rate:2:up" in reply.custom_ids()
        assert reply.allowed_mentions.get("parse") == []  # names the editor, pings no one
        await posted.wait_finished(timeout=30)  # its message ids are stored
        await ephemeral(await emu.press_button(reply, "muse:rate:2:up", user="manager"))

        sft = await export_rows(bot, "sft", tmp_path / "sft.jsonl")
        dpo = await export_rows(bot, "dpo", tmp_path / "dpo.jsonl")
        kto = await export_rows(bot, "kto", tmp_path / "kto.jsonl")
    db = tmp_path / "muse.db"
    (edit,) = rows(
        db, "SELECT source, parent_id, user_id, output, message_id FROM generations WHERE id = 2"
    )
    assert edit[:4] == ("edit", 1, emu.user("bob").id, better) and edit[4] == reply.id
    (row,) = [r for r in sft if r["metadata"]["source"] == "edit"]
    assert row["messages"][-1] == {"role": "assistant", "content": better}
    (pair,) = dpo
    assert pair["chosen"][0]["content"] == better
    assert pair["rejected"][0]["content"] == "Once a fox met a crow. The end."
    assert pair["metadata"]["source"] == "edit"
    assert all("source" in r["metadata"] for r in [*sft, *dpo, *kto])
    for fmt in ("sft", "dpo", "kto"):  # TRL reads them through `datasets`
        loaded = datasets.load_dataset("json", data_files=str(tmp_path / f"{fmt}.jsonl"))
        assert loaded["train"].num_rows == {"sft": len(sft), "dpo": 1, "kto": len(kto)}[fmt]


async def test_a_text_too_long_for_the_edit_box_is_refused(emu: DiscordEmulator, tmp_path):
    engine = ReplayEngine([" ".join(["word"] * 900)])  # 4,499 characters
    async with muse(emu, tmp_path / "muse.db", engine):
        story = await finished(await emu.slash_command("story", {"prompt": "long"}))
        pressed = await emu.press_button(story.original, "muse:edit:1", user="bob")
        answer = await ephemeral(pressed)
        assert "4,499 characters" in answer.content and "4,000" in answer.content
        assert pressed.modal is None


async def test_a_channel_persona_speaks_in_every_generation(emu: DiscordEmulator, tmp_path):
    engine = ReplayEngine(["Arr, the sea is wide."])
    db = tmp_path / "muse.db"
    async with muse(emu, db, engine) as bot:
        assert "Manage Server" in await refusal(
            await emu.slash_command("persona", {"name": "Quill", "prompt": "a pirate"})
        )
        none = await refusal(await emu.slash_command("persona", {}, user="manager"))
        assert "no persona" in none
        await bot.app.store.update_guild_settings(emu.guild.id, blocklist=("kraken",))
        blocked = await refusal(
            await emu.slash_command(
                "persona", {"name": "Quill", "prompt": "fears the kraken"}, user="manager"
            )
        )
        assert "kraken" in blocked and await bot.app.store.get_persona(emu.channel.id) is None
        saved = await refusal(
            await emu.slash_command(
                "persona",
                {"name": "Captain Quill", "prompt": "A salty pirate who loves the sea."},
                user="manager",
            )
        )
        assert saved.startswith("✅ Saved.") and "Captain Quill" in saved

        story = await finished(await emu.slash_command("story", {"prompt": "the sea"}))
        system = engine.requests[-1].messages[0]
        assert system.role == "system" and "storyteller" in system.content
        assert "You are Captain Quill. A salty pirate who loves the sea." in system.content
        assert "· as Captain Quill ·" in story.original.content

        await emu.slash_command("chat", {"message": "hello"}, user="bob")
        await bot_reply_in(emu, await emu.wait_for(lambda: emu.threads() and emu.threads()[0]))
        chat_system = engine.requests[-1].messages[0].content
        assert chat_system == "You are Captain Quill. A salty pirate who loves the sea."

        sft_path = tmp_path / "sft.jsonl"
        await bot.app.store.record_feedback(1, emu.user("bob").id, thumbs="up")
        (row,) = await export_rows(bot, "sft", sft_path)
        assert row["metadata"]["persona"] == "Captain Quill"
        assert row["messages"][0]["content"] == system.content  # what the model saw

        cleared = await refusal(await emu.slash_command("persona", {"clear": True}, user="manager"))
        assert cleared == "✅ This channel's persona was removed."
        await finished(
            await emu.slash_command("story", {"prompt": "the sea"}, user="manager"), "muse:rate:3"
        )
        assert "Quill" not in engine.requests[-1].messages[0].content


async def test_game_and_content_presets(emu: DiscordEmulator, tmp_path):
    engine = ReplayEngine(["Name: Pip\nLook: small\nVoice: squeaky\nMotive: gold\nSecret: none"])
    async with muse(emu, tmp_path / "muse.db", engine):
        character = await finished(
            await emu.slash_command("character", {"concept": "a goblin chef"})
        )
        request = engine.requests[-1]
        assert (
            request.response_prefix == "Name:" and "a goblin chef" in request.messages[-1].content
        )
        assert "Voice: squeaky" in character.original.content
        await finished(
            await emu.slash_command("quest", {"premise": "a stolen crown"}), "muse:rate:2"
        )
        assert engine.requests[-1].response_prefix == "Giver:"
        for n, kind in enumerate(("ad", "social", "news"), 3):
            await finished(
                await emu.slash_command("describe", {"product": "a lamp", "kind": kind}),
                f"muse:rate:{n}",
            )
        asks = [r.messages[-1].content for r in engine.requests[2:]]
        assert asks[0].startswith("Write an ad for a lamp")
        assert asks[1].startswith("Write a social-media post about a lamp")
        assert asks[2].startswith("Write a short news blurb announcing a lamp")


async def test_a_cut_text_ends_at_a_sentence_and_continues(emu: DiscordEmulator, tmp_path):
    engine = ReplayEngine([STORY, "It opened the old mill. Inside, a lamp was still warm."])
    engine.finish_reason = "length"
    db = tmp_path / "muse.db"
    async with muse(emu, db, engine):
        story = await finished(await emu.slash_command("story", {"prompt": "a fox"}))
        content = story.original.content
        assert "It opened the old mill.\n" in content and "still warm" not in content
        assert "✂️ Cut at the length limit" in content
        assert "muse:continue:1" in story.original.custom_ids()
        engine.finish_reason = "stop"
        more = await finished(
            await emu.press_button(story.original, "muse:continue:1", user="bob"), "muse:rate:2"
        )
        assert (
            engine.requests[-1].response_prefix == "The fox found a key. It opened the old mill. "
        )
        assert "muse:continue:2" not in more.original.custom_ids()  # not cut: no ▶
    (first,) = rows(db, "SELECT output FROM generations WHERE id = 1")
    assert first == ("The fox found a key. It opened the old mill.",)
    assert rows(db, "SELECT parent_id, user_id FROM generations WHERE id = 2") == [
        (1, emu.user("bob").id)
    ]


async def test_edits_pass_the_same_admission_as_generations(emu: DiscordEmulator, tmp_path):
    """The rate limit, a disabled channel and the blocklist refuse an edit as they refuse a
    generation: ephemeral, saying why and when to try again, nothing stored."""
    engine = ReplayEngine(["Once a fox met a crow. The end.", "A hen sang."])
    db = tmp_path / "muse.db"

    async def edit_box(user: str) -> Any:
        shown = await emu.press_button(story.original, "muse:edit:1", user=user)
        await shown.wait_callback()
        assert shown.callback_type == 9, shown  # the modal
        return shown

    async def refused_at_press(user: str) -> str:
        pressed = await emu.press_button(story.original, "muse:edit:1", user=user)
        said = (await ephemeral(pressed)).content
        assert pressed.modal is None  # no box to type into
        return said

    def generations() -> int:
        return rows(db, "SELECT COUNT(*) FROM generations")[0][0]

    async with muse(emu, db, engine) as bot:
        story = await finished(await emu.slash_command("story", {"prompt": "a fox"}))
        store = bot.app.store
        await store.update_guild_settings(emu.guild.id, per_user_per_minute=1)
        box = await edit_box("bob")
        await finished(await emu.slash_command("story", {"prompt": "a hen"}, user="bob"), "rate:2")
        over = await ephemeral(await emu.submit_modal(box, {"text": "A fox met a crow, twice."}))
        assert "1 texts a minute — try again in" in over.content
        assert "Nothing was saved" in over.content
        assert "try again in" in await refused_at_press("bob")
        assert generations() == 2  # the two stories

        await store.update_guild_settings(emu.guild.id, per_user_per_minute=None, channels=(7,))
        elsewhere = await refused_at_press("moderator")
        assert "only in <#7>" in elsewhere and "try again there" in elsewhere
        await store.update_guild_settings(emu.guild.id, channels=(), blocklist=("kraken",))
        box = await edit_box("moderator")
        await store.update_guild_settings(emu.guild.id, channels=(7,))  # closed while typing
        closed = await ephemeral(await emu.submit_modal(box, {"text": "A fox and a crow."}))
        assert "only in <#7>" in closed.content and "Nothing was saved" in closed.content
        await store.update_guild_settings(emu.guild.id, channels=())
        box = await edit_box("moderator")
        blocked = await ephemeral(await emu.submit_modal(box, {"text": "A fox met a KRAKEN."}))
        assert "Your text contains `kraken`" in blocked.content
        assert "Nothing was saved" in blocked.content
        assert generations() == 2

        await store.update_guild_settings(emu.guild.id, per_user_per_minute=1)
        box = await edit_box("moderator")  # admitted: saved, and it counts toward the limit
        await answered(await emu.submit_modal(box, {"text": "A fox met a wise crow."}))
        assert "try again in" in await refused_at_press("moderator")
    assert rows(db, "SELECT user_id FROM generations WHERE source = 'edit'") == [
        (emu.user("moderator").id,)
    ]
