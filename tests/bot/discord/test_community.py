"""/chat, /history, /stats, /export, /forget, /privacy, /help through the emulator."""

from __future__ import annotations

import json
import sys

import pytest

from generation.engine.local_engine import Engine
from tests.bot.community import answered, bot_reply_in, ephemeral, finished, muse, refusal, rows
from tests.bot.fakes import ReplayEngine
from tests.discord_emulator import DiscordEmulator
from tests.discord_emulator.models import CREATE_PUBLIC_THREADS


async def test_chat_opens_a_thread_then_continues_with_history(emu: DiscordEmulator, tmp_path):
    engine = ReplayEngine(["Dragons hoard gold.", "Mostly coins and cups."])
    db = tmp_path / "muse.db"
    async with muse(emu, db, engine):
        first = await emu.slash_command("chat", {"message": "Tell me about dragons"})
        thread = await emu.wait_for(lambda: emu.threads() and emu.threads()[0])
        assert thread.name == "Tell me about dragons" and thread.parent_id == emu.channel.id
        answer = await bot_reply_in(emu, thread)
        assert answer.content.startswith("Dragons hoard gold.") and answer.pings_no_one
        assert first.original.content == "💬 Tell me about dragons"

        again = await finished(
            await emu.slash_command("chat", {"message": "And their hoards?"}, channel=thread)
        )
        assert again.original.channel_id == thread.id
        assert again.original.content.startswith("Mostly coins and cups.")
    (messages_json,) = rows(db, "SELECT messages_json FROM generations WHERE id = 2")[0]
    sent = [(m["role"], m["content"]) for m in json.loads(messages_json)]
    assert sent[1:] == [
        ("user", "Tell me about dragons"),
        ("assistant", "Dragons hoard gold."),
        ("user", "And their hoards?"),
    ]
    assert [m.content for m in engine.requests[1].messages[1:]] == [c for _, c in sent[1:]]
    assert rows(db, "SELECT conversation_id, channel_id FROM generations") == [
        (1, thread.id),
        (1, thread.id),
    ]


async def test_chat_history_drops_the_oldest_turns_to_fit(emu: DiscordEmulator, tmp_path):
    engine = ReplayEngine(["word " * 500], delay_s=0.0005)  # ~2500 characters a reply
    async with muse(emu, tmp_path / "muse.db", engine, max_tokens=256) as bot:
        await emu.slash_command("chat", {"message": "first"})
        thread = await emu.wait_for(lambda: emu.threads() and emu.threads()[0])
        await bot_reply_in(emu, thread)
        for n, text in enumerate(["second", "third", "fourth"], 2):
            await finished(
                await emu.slash_command("chat", {"message": text}, channel=thread),
                f"muse:rate:{n}",
            )
        last = [m.content for m in engine.requests[-1].messages if m.role == "user"]
        assert last[-1] == "fourth" and "first" not in last and "third" in last
        assert bot.app.engine is engine


async def test_plain_messages_in_a_muse_thread_with_the_real_model(
    emu: DiscordEmulator, tmp_path, engine: Engine
):
    db = tmp_path / "muse.db"
    async with muse(emu, db, engine, max_tokens=16, message_content=True) as bot:
        assert bot.intents.message_content
        await emu.slash_command("chat", {"message": "Say hello to the guild."})
        thread = await emu.wait_for(lambda: emu.threads() and emu.threads()[0])
        await bot_reply_in(emu, thread)
        await emu.send_message(thread, "And now say goodbye.", user="bob")
        reply = await bot_reply_in(emu, thread, 2)
        assert reply.message_reference is not None and reply.content.strip()
    assert rows(db, "SELECT user_id, status, conversation_id FROM generations ORDER BY id") == [
        (emu.user("alice").id, "done", 1),
        (emu.user("bob").id, "done", 1),
    ]
    (messages_json,) = rows(db, "SELECT messages_json FROM generations WHERE id = 2")[0]
    assert "Say hello to the guild." in messages_json


async def test_plain_messages_are_ignored_without_message_content(emu: DiscordEmulator, tmp_path):
    engine = ReplayEngine()
    async with muse(emu, tmp_path / "muse.db", engine) as bot:
        assert not bot.intents.message_content
        await emu.slash_command("chat", {"message": "hi"})
        thread = await emu.wait_for(lambda: emu.threads() and emu.threads()[0])
        await bot_reply_in(emu, thread)
        await emu.send_message(thread, "are you there?", user="bob")
        later = await finished(await emu.slash_command("chat", {"message": "?"}, channel=thread))
        assert later.original.content
    assert len(engine.requests) == 2  # the plain message started nothing


async def test_chat_explains_missing_thread_permissions(emu: DiscordEmulator, tmp_path):
    for role in emu.guild.roles.values():
        role.permissions &= ~CREATE_PUBLIC_THREADS
    engine = ReplayEngine()
    async with muse(emu, tmp_path / "muse.db", engine):
        answer = await refusal(await emu.slash_command("chat", {"message": "hi"}))
    assert "Create Public Threads" in answer
    assert emu.threads() == [] and engine.requests == []


async def test_history_lists_your_generations_with_jump_links(emu: DiscordEmulator, tmp_path):
    async with muse(emu, tmp_path / "muse.db", ReplayEngine(["A fox ran far."])):
        one = await finished(await emu.slash_command("story", {"prompt": "a fox"}))
        await finished(await emu.slash_command("poem", {"topic": "rain"}), "muse:rate:2")
        mine = await ephemeral(await emu.slash_command("history", {"count": 5}))
        theirs = await ephemeral(await emu.slash_command("history", user="bob"))
    link = f"https://discord.com/channels/{emu.guild.id}/{emu.channel.id}/{one.original.id}"
    assert link in mine.content
    lines = mine.content.splitlines()
    assert lines[1].startswith("`#2` /poem · done") and lines[2].startswith("`#1` /story · done")
    assert lines[2].endswith("A fox ran far.")
    assert "no generations" in theirs.content


async def test_stats_summarises_this_guild_with_a_chart(emu: DiscordEmulator, tmp_path):
    async with muse(emu, tmp_path / "muse.db", ReplayEngine()):
        story = await finished(await emu.slash_command("story", {"prompt": "a fox"}))
        await ephemeral(await emu.press_button(story.original, "muse:rate:1:up", user="bob"))
        message = await answered(await emu.slash_command("stats"))
    assert "**/story** — 1 generations · 1 ratings · 👍 100%" in message.content
    (chart,) = message.attachments
    assert chart.filename == "muse-stats.png" and chart.data.startswith(b"\x89PNG")


async def test_export_is_for_managers_and_holds_this_guild_only(emu: DiscordEmulator, tmp_path):
    db = tmp_path / "muse.db"
    async with muse(emu, db, ReplayEngine()) as bot:
        await finished(await emu.slash_command("story", {"prompt": "a fox"}))
        other = await bot.app.store.record_generation(
            user_id=1, task="story", messages=[], params={}, model_id="m", guild_id=42
        )
        await bot.app.store.finish_generation(other, "elsewhere", "stop", 1, 1, 1.0, 1.0)
        refused = await refusal(await emu.slash_command("export", {"format": "raw"}))
        export = await emu.slash_command("export", {"format": "raw"}, user="manager")
        message = await answered(export)
    assert "Manage Server" in refused
    (attachment,) = message.attachments
    assert attachment.filename == f"muse-{emu.guild.id}-raw.jsonl"
    exported = [json.loads(line) for line in attachment.text().splitlines()]
    assert [row["id"] for row in exported] == [1] and message.ephemeral


async def test_export_too_large_says_what_to_run(
    emu: DiscordEmulator, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    async with muse(emu, tmp_path / "muse.db", ReplayEngine()):
        loaded = sys.modules["bot.discord.cogs.admin"]  # load_extension imports a fresh module
        monkeypatch.setattr(loaded, "upload_limit", lambda interaction: 10)
        await finished(await emu.slash_command("story", {"prompt": "a fox"}))
        export = await emu.slash_command(
            "export", {"format": "raw", "min_score": 0}, user="manager"
        )
        message = await answered(export)
    text = message.content
    assert "larger than Discord's upload limit" in text and not message.attachments
    assert f"muse export --format raw --guild {emu.guild.id} --min-score 0 --out" in text


async def test_privacy_deny_keeps_you_out_of_exports(emu: DiscordEmulator, tmp_path):
    async def exported_rows() -> int:
        export = await emu.slash_command("export", {"format": "sft"}, user="manager")
        message = await answered(export)
        return len(message.attachments[0].text().splitlines())

    async with muse(emu, tmp_path / "muse.db", ReplayEngine()):
        story = await finished(await emu.slash_command("story", {"prompt": "a fox"}))
        await ephemeral(await emu.press_button(story.original, "muse:rate:1:up", user="bob"))
        shown = await ephemeral(await emu.slash_command("privacy"))
        assert "pseudonym" in shown.content and "allowed" in shown.content
        assert await exported_rows() == 1
        denied = await ephemeral(await emu.slash_command("privacy", {"training": "deny"}))
        assert "opted out" in denied.content
        assert await exported_rows() == 0


async def test_forget_needs_the_callers_own_confirmation(emu: DiscordEmulator, tmp_path):
    async with muse(emu, tmp_path / "muse.db", ReplayEngine()) as bot:
        await finished(await emu.slash_command("story", {"prompt": "a fox"}))
        ask = await ephemeral(await emu.slash_command("forget"))
        custom_id = f"muse:forget:{emu.user('alice').id}"
        assert ask.custom_ids() == [custom_id]
        other = await ephemeral(await emu.press_button(ask, custom_id, user="bob"))
        assert "Only the person who asked" in other.content
        assert await bot.app.store.get_generation(1) is not None
        confirm = await emu.press_button(ask, custom_id, user="alice")
        await confirm.wait_callback()
        await emu.wait_for(lambda: "Done" in ask.content)
        assert "1 generations" in ask.content and ask.custom_ids() == []
        assert await bot.app.store.get_generation(1) is None


async def test_help_names_every_command(emu: DiscordEmulator, tmp_path):
    async with muse(emu, tmp_path / "muse.db", ReplayEngine()):
        shown = await ephemeral(await emu.slash_command("help"))
    for command in ("story", "chat", "compare", "history", "privacy", "forget", "export"):
        assert f"`/{command}`" in shown.content
    assert "Ratings" in shown.content
