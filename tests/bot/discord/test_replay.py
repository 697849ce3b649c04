"""Bot logic against the replaying engine double: fast cases (splitting, busy, permissions)."""

from __future__ import annotations

import re

from bot.core import shutdown
from tests.bot.fakes import ReplayEngine
from tests.bot.helpers import BotFactory
from tests.discord_emulator import DiscordEmulator

FOOTER = re.compile(r"-# replay-model · \d+ tokens · \d+\.\d s · AI-generated$")


async def test_long_text_continues_in_followups_and_deletes_with_them(
    emu: DiscordEmulator, start_bot: BotFactory
):
    sentence = "The dragon slept under the mountain for a thousand years. "
    engine = ReplayEngine([sentence * 80], delay_s=0.0005)
    async with start_bot(engine) as bot:
        story = await emu.slash_command("story", {"prompt": "a dragon"}, user="alice")
        await story.wait_until(lambda i: len(i.followups) >= 2, timeout=15)
        await story.wait_finished()
        parts = [story.original, *[m for m in story.followups if not m.ephemeral]]
        assert len(parts) >= 3
        assert all(len(m.content) <= 2000 for m in parts)
        assert all(m.content.rstrip().endswith(".") for m in parts[:-1])  # sentence breaks
        assert FOOTER.search(parts[-1].content)
        assert "muse:rate:1:up" in story.original.custom_ids()
        assert all(m.pings_no_one for m in story.messages)
        row = await bot.app.store.get_generation(1)
        assert row is not None and row.status == "done" and len(row.output) > 4000
        assert row.followup_message_ids == tuple(m.id for m in parts[1:])

        gone = await emu.press_button(story.original, "muse:delete:1", user="alice")
        await gone.wait_until(lambda i: i.original)
        assert all(m.deleted for m in parts)  # the whole reply, not just its first message
        assert (await bot.app.store.get_generation(1)).status == "deleted"


async def test_queue_full_answers_busy_at_once(emu: DiscordEmulator, start_bot: BotFactory):
    engine = ReplayEngine()
    engine.busy_retry_s = 12
    async with start_bot(engine) as bot:
        story = await emu.slash_command("story", {"prompt": "a dragon"})
        await story.wait_finished()
        assert story.callback_type == 4 and story.original.ephemeral
        assert story.original.content == "Muse is busy — try again in 12 s."
        assert await bot.app.store.get_generation(1) is None


async def test_queued_position_then_edits_at_most_every_interval(
    emu: DiscordEmulator, start_bot: BotFactory
):
    engine = ReplayEngine([" ".join(f"word{n}" for n in range(60))], delay_s=0.05)
    engine.queued_s = 0.5
    async with start_bot(engine, edit_interval_s=0.6) as bot:
        story = await emu.slash_command("story", {"prompt": "a dragon"})
        await story.wait_callback()
        assert story.callback_ms < 3000 and story.deferred
        await story.wait_until(lambda i: "muse:rate:1:up" in i.original.custom_ids(), 15)
        edits = story.original.edits
        assert edits[0].content == "⏳ Queued — position 1"
        assert edits[0].components and "muse:stop:1" in str(edits[0].components)
        assert any(e.content.endswith("▌") for e in edits)
        gaps = [b.at - a.at for a, b in zip(edits[:-2], edits[1:-1], strict=True)]
        assert gaps and min(gaps) >= bot.app.edit_interval_s * 0.95
        assert FOOTER.search(edits[-1].content) and "word59" in edits[-1].content


async def test_stop_and_delete_are_for_the_requester_or_a_moderator(
    emu: DiscordEmulator, start_bot: BotFactory
):
    engine = ReplayEngine([" ".join(["slow"] * 400)], delay_s=0.02)
    async with start_bot(engine) as bot:
        story = await emu.slash_command("story", {"prompt": "a dragon"}, user="alice")
        await story.wait_until(lambda i: i.original and "muse:stop:1" in i.original.custom_ids())
        refused = await emu.press_button(story.original, "muse:stop:1", user="bob")
        await refused.wait_until(lambda i: i.original)
        assert refused.original.ephemeral and "Only the person" in refused.original.content
        stopped = await emu.press_button(story.original, "muse:stop:1", user="moderator")
        await stopped.wait_until(lambda i: i.original)
        await story.wait_until(lambda i: "muse:rate:1:up" in i.original.custom_ids())
        assert "Stopped" in story.original.content
        assert (await bot.app.store.get_generation(1)).status == "cancelled"

        bob = await emu.press_button(story.original, "muse:delete:1", user="bob")
        await bob.wait_until(lambda i: i.original)
        assert "Only the person" in bob.original.content and not story.original.deleted
        mod = await emu.press_button(story.original, "muse:delete:1", user="moderator")
        await mod.wait_until(lambda i: i.original)
        assert story.original.deleted
        assert (await bot.app.store.get_generation(1)).status == "deleted"


async def test_rate_limited_edit_still_lands_the_final_text(
    emu: DiscordEmulator, start_bot: BotFactory
):
    emu.faults.rate_limit(every=2, path="@original$", retry_after=0.3)
    engine = ReplayEngine(["one two three four five six seven eight"], delay_s=0.1)
    async with start_bot(engine, edit_interval_s=0.2) as bot:
        story = await emu.slash_command("generate", {"prompt": "count"})
        await story.wait_until(
            lambda i: i.original and "muse:rate:1:up" in i.original.custom_ids(), 15
        )
        assert emu.faults.count(429) >= 1
        assert story.original.content.startswith("one two three four five six seven eight")
        assert "muse:rate:1:up" in story.original.custom_ids()
        assert (await bot.app.store.get_generation(1)).status == "done"


async def test_bad_option_is_refused_by_the_bot(emu: DiscordEmulator, start_bot: BotFactory):
    async with start_bot(ReplayEngine()) as bot:
        bad = await emu.slash_command("generate", {"prompt": "x", "temperature": 5.0})
        await bad.wait_finished()
        assert bad.original.ephemeral and "temperature must be from 0 to 2" in bad.original.content
        assert bot.app.engine.requests == []


async def test_a_shutdown_gives_a_compare_its_grace_then_cuts_both_takes_off(
    emu: DiscordEmulator, start_bot: BotFactory
):
    engine = ReplayEngine(["quick answer", " ".join(["slow"] * 400)], delay_s=0.02)
    async with start_bot(engine) as bot:
        compare = await emu.slash_command("compare", {"prompt": "a dragon"}, user="alice")
        await compare.wait_until(lambda _: len(bot.app.active) == 2)
        # Both takes count as running until the compare ends; A had finished, so only B is cut.
        assert await shutdown.drain(bot.app, grace_s=0.3, final_edits_s=5) == 2
        await compare.wait_until(lambda i: "restarted" in i.original.content, timeout=10)
        statuses = [(await bot.app.store.get_generation(i)).status for i in (1, 2)]
        assert statuses == ["done", "interrupted"]
        assert not compare.original.custom_ids()  # no A/B/Tie: nothing finished to vote on
        assert not bot.app.active
