"""/settings and its enforcement (tasks, channels, blocklist, defaults), limits, retention."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from storage.pg_conn import try_advisory_lock
from storage.retention import RETENTION_LOCK
from storage.store import Store
from tests.bot.community import ephemeral, finished, muse, refusal, rows
from tests.bot.fakes import ReplayEngine
from tests.discord_emulator import DiscordEmulator
from tests.polling import eventually
from tests.postgres_server import PostgresServer
from tests.storage import peek


async def settings(emu: DiscordEmulator, user: str = "manager", **options) -> str:
    return (await ephemeral(await emu.slash_command("settings", options, user=user))).content


async def test_settings_are_for_managers_show_validate_and_clear(emu: DiscordEmulator, tmp_path):
    async with muse(emu, tmp_path / "muse.db", ReplayEngine()) as bot:
        assert "Manage Server" in await settings(emu, user="alice", blocklist="x")
        shown = await settings(emu)
        assert "enabled_tasks: all" in shown and "per_user_per_minute: 6 (default)" in shown
        saved = await settings(
            emu,
            temperature=0.3,
            enabled_tasks="Story, poem",
            channels=f"<#{emu.channel.id}>",
            blocklist="Dragon, evil wizard",
        )
        assert saved.startswith("✅ Saved.") and "enabled_tasks: story, poem" in saved
        assert "`dragon`, `evil wizard`" in saved and f"<#{emu.channel.id}>" in saved
        assert "Unknown task limerick" in await settings(emu, enabled_tasks="story, limerick")
        assert "not a channel" in await settings(emu, channels="general")
        assert "blocklist: none" in await settings(emu, blocklist="")
        stored = await bot.app.store.get_guild_settings(emu.guild.id)
        assert "Cannot reset colour" in await settings(emu, reset="colour, temperature")
        both = await settings(emu, temperature=0.5, reset="temperature")
        assert "both set and reset" in both
        assert (await bot.app.store.get_guild_settings(emu.guild.id)) == stored  # nothing changed
        back = await settings(emu, reset="Temperature, enabled_tasks")
        assert back.startswith("✅ Saved.") and "enabled_tasks: all" in back
        assert "temperature: preset default" in back
        after_reset = await bot.app.store.get_guild_settings(emu.guild.id)
    assert stored.enabled_tasks == ("story", "poem") and stored.temperature == 0.3
    assert stored.blocklist == () and stored.channels == (emu.channel.id,)
    assert after_reset.temperature is None and after_reset.enabled_tasks is None
    assert after_reset.channels == (emu.channel.id,)  # what was not named stays


async def test_disabled_tasks_and_channels_are_refused_naming_the_allowed(tmp_path):
    engine = ReplayEngine()
    async with DiscordEmulator(channels=("general", "art")) as emu:
        art = emu.guild.channel("art")
        async with muse(emu, tmp_path / "muse.db", engine):
            await settings(emu, enabled_tasks="poem, generate", channels=str(art.id))
            story = await refusal(await emu.slash_command("story", {"prompt": "a fox"}))
            assert "/story is turned off" in story and "/poem, /generate" in story
            here = await refusal(await emu.slash_command("poem", {"topic": "rain"}))
            assert f"only in <#{art.id}>" in here and "try again" in here
            chat = await refusal(await emu.slash_command("chat", {"message": "hi"}, channel=art))
            assert "/chat is turned off" in chat
            poem = await finished(await emu.slash_command("poem", {"topic": "rain"}, channel=art))
            await settings(emu, enabled_tasks="generate")
            regen = await refusal(await emu.press_button(poem.original, "muse:regen:1"))
            assert "/poem is turned off" in regen and "Enabled here: /generate" in regen
            await settings(emu, enabled_tasks="poem")
            compare = await emu.slash_command("compare", {"prompt": "x"}, channel=art)
            assert "/generate is turned off" in await refusal(compare)
    assert len(engine.requests) == 1


async def test_blocklist_refuses_prompts_and_withholds_outputs(emu: DiscordEmulator, tmp_path):
    engine = ReplayEngine(["Once the DRAGON woke, the village burned."], delay_s=0.02)
    db = tmp_path / "muse.db"
    async with muse(emu, db, engine):
        await settings(emu, blocklist="dragon, evil wizard")
        asked = await refusal(await emu.slash_command("story", {"prompt": "An Evil  Wizard"}))
        assert "contains `evil wizard`" in asked and engine.requests == []
        reply = await finished(await emu.slash_command("generate", {"prompt": "a village"}))
        compare = await finished(
            await emu.slash_command("compare", {"prompt": "a village"}), "muse:compare:"
        )
    assert "withheld" in reply.original.content and "`dragon`" in reply.original.content
    shown = [v.content for v in reply.original.history] + [str(compare.original.embeds)]
    assert not any("DRAGON" in text for text in shown)
    assert "withheld" in compare.original.embeds[0]["description"]
    for status, output, error in rows(db, "SELECT status, output, error FROM generations"):
        assert (status, output) == ("failed", "") and "dragon" in error


async def test_guild_temperature_and_max_tokens_are_defaults(emu: DiscordEmulator, tmp_path):
    engine = ReplayEngine()
    async with muse(emu, tmp_path / "muse.db", engine):
        await settings(emu, temperature=0.25, max_tokens=40)
        await finished(await emu.slash_command("story", {"prompt": "a fox"}))
        explicit = {"prompt": "x", "temperature": 1.5, "max_tokens": 64}
        await finished(await emu.slash_command("generate", explicit), "muse:rate:2")
    first, second = engine.requests
    assert (first.temperature, first.max_new_tokens) == (0.25, 40)
    assert (second.temperature, second.max_new_tokens) == (1.5, 64)


async def test_a_burst_is_refused_while_another_user_is_served(emu: DiscordEmulator, tmp_path):
    engine = ReplayEngine([" ".join(["slow"] * 40)], delay_s=0.02)
    async with muse(emu, tmp_path / "muse.db", engine, user_per_minute=3) as bot:
        now = [1000.0]
        bot.app.limits.clock = lambda: now[0]
        burst = [
            await emu.slash_command("generate", {"prompt": f"take {n}"}, user="alice")
            for n in range(8)
        ]
        bob = await emu.slash_command("generate", {"prompt": "mine"}, user="bob")
        refused = [await refusal(r) for r in burst[1:]]
        assert all("try again in" in text for text in refused)
        await finished(bob)
        assert bob.original.content.startswith("slow slow")
        await finished(burst[0])
        for _ in (2, 3):  # the 2nd and 3rd starts of the minute
            await finished(await emu.slash_command("generate", {"prompt": "x"}))
        limited = await refusal(await emu.slash_command("generate", {"prompt": "x"}))
        assert "3 texts a minute — try again in 60 s" in limited
        now[0] += 61
        await finished(await emu.slash_command("generate", {"prompt": "x"}))
    assert [r.user_key for r in engine.requests].count(str(emu.user("alice").id)) == 4


async def test_guild_concurrency_caps_running_generations(emu: DiscordEmulator, tmp_path):
    engine = ReplayEngine([" ".join(["slow"] * 30)], delay_s=0.02)
    async with muse(emu, tmp_path / "muse.db", engine, guild_concurrency=1) as bot:
        alice = await emu.slash_command("story", {"prompt": "a fox"})
        await alice.wait_until(lambda i: i.deferred)
        busy = await refusal(await emu.slash_command("story", {"prompt": "b"}, user="bob"))
        assert "already has 1 texts being written — try again in" in busy
        await finished(alice)
        await finished(await emu.slash_command("story", {"prompt": "b"}, user="bob"))
        assert bot.app.limits.running(emu.guild.id) == 0


async def test_the_running_slot_is_released_after_a_refusal_by_the_engine(
    emu: DiscordEmulator, tmp_path
):
    engine = ReplayEngine()
    engine.busy_retry_s = 5
    async with muse(emu, tmp_path / "muse.db", engine) as bot:
        busy = await refusal(await emu.slash_command("story", {"prompt": "a fox"}))
        assert busy == "Muse is busy — try again in 5 s."
        engine.busy_retry_s = None
        await finished(await emu.slash_command("story", {"prompt": "a fox"}))
        assert bot.app.limits.running(emu.guild.id) == 0


async def test_retention_purges_old_generations_daily(emu: DiscordEmulator, tmp_path):
    db = tmp_path / "muse.db"
    past = datetime.now(UTC) - timedelta(days=10)
    async with Store.open(db, clock=lambda: past) as old_store:
        await old_store.record_generation(
            user_id=1, task="story", messages=[], params={}, model_id="m"
        )
    async with muse(emu, db, ReplayEngine(), retention_days=7) as bot:
        cog = bot.get_cog("AdminCog")
        assert cog.retention is not None and not cog.retention.done()
        await cog.cog_unload()
        assert cog.retention.cancelled()
        cog.first_purge_s = 0.0
        await cog.cog_load()
        for _ in range(100):
            if not rows(db, "SELECT id FROM generations WHERE user_id = 1"):
                break
            await asyncio.sleep(0.05)
        await finished(await emu.slash_command("story", {"prompt": "new"}))
        await asyncio.sleep(0.1)  # the loop now sleeps a day: the new row stays
    assert rows(db, "SELECT user_id, status FROM generations") == [(emu.user("alice").id, "done")]
    async with muse(emu, db, ReplayEngine()) as bot:  # MUSE_RETENTION_DAYS=0: no task
        assert bot.get_cog("AdminCog").retention is None


async def test_retention_skips_a_round_while_another_process_purges(
    emu: DiscordEmulator, postgres_server: PostgresServer, caplog
):
    url = postgres_server.create_database()
    past = datetime.now(UTC) - timedelta(days=10)
    async with Store.open(url, clock=lambda: past) as old_store:
        await old_store.record_generation(
            user_id=1, task="story", messages=[], params={}, model_id="m"
        )
    caplog.set_level(logging.INFO, logger="muse.bot.discord.cogs.admin")
    with try_advisory_lock(url, RETENTION_LOCK) as held:  # another process's purge
        assert held
        async with muse(emu, url, ReplayEngine(), retention_days=7) as bot:
            cog = bot.get_cog("AdminCog")
            await cog.cog_unload()
            cog.first_purge_s = 0.0
            await cog.cog_load()
            assert await eventually(lambda: "another process is purging" in caplog.text, 10)
    assert peek.rows(url, "SELECT user_id FROM generations") == [(1,)]
