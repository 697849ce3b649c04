"""The learning loop through the emulator, on the replay engine with `fake_tune` standing in for
the training (a real tune is `muse tune`'s own tests): a server turns the loop on, its members'
ratings make it tune by itself, the challenger is checked, served without a restart and
announced, blind final votes promote it; a second server never sees it; a rejected challenger is
retired; `/loop rollback`; `/forget` of a contributor retires the model."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

from bot.discord.client import MuseBot
from generation.errors import AdapterError
from generation.types import GenerationChunk, GenerationRequest
from storage.rows import ModelRecord
from storage.store import Store
from tests.bot.community import (
    announced,
    answered,
    arena_reply,
    ephemeral,
    finished,
    muse,
    refusal,
    rows,
    vote_final,
)
from tests.bot.fakes import ReplayEngine
from tests.discord_emulator import DiscordEmulator, InteractionRecord
from tests.polling import eventually

TUNE = (sys.executable, "-m", "tests.bot.fake_tune")
MARKER = "Verily,"
VOTERS = ("bob", "moderator", "owner")


class TwoVoices(ReplayEngine):
    """The base says plain things; every adapter starts with the marker."""

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if request.model in self.adapters:
            self.texts = [f"{MARKER} a tuned voice speaks of {len(self.requests)} things."]
        else:
            self.texts = [f"A plain voice speaks of {len(self.requests)} things."]
        return super().stream(request)


class Strict(TwoVoices):
    """Refuses a name it serves already, as both engines do."""

    async def add_adapter(self, name: str, path: object) -> None:
        if name in self.adapters:
            raise AdapterError(f"the name {name!r} is already served")
        await super().add_adapter(name, path)


COMMUNITY = 8  # members asking and rating in turn: none supplies over a quarter of the rows


def community(emu: DiscordEmulator) -> None:
    for n in range(COMMUNITY):
        emu.add_user(f"asker{n}")
        emu.add_user(f"rater{n}")


async def collect(emu: DiscordEmulator, n: int = 2 * COMMUNITY) -> None:
    """`n` texts, each asked by one member and rated 👍 by another, all in turn (alice, whose
    /forget a test uses, asks the first)."""
    for i in range(n):
        asker = "alice" if i == 0 else f"asker{i % COMMUNITY}"
        story = await finished(
            await emu.slash_command("generate", {"prompt": f"Topic {i}"}, user=asker)
        )
        rate = next(c for c in story.original.custom_ids() if c.endswith(":up"))
        rater = f"rater{i % COMMUNITY}"
        await ephemeral(await emu.press_button(story.original, rate, user=rater))


async def battle(emu: DiscordEmulator, prefer_tuned: bool) -> None:
    """One /arena; each voter picks the tuned side (or the other)."""
    reply = await arena_reply(
        await emu.slash_command("arena", {"prompt": "A line about rain."}), timeout_s=30
    )
    tuned_side = "A" if MARKER in reply.embeds[0]["description"] else "B"
    side = tuned_side if prefer_tuned else ("B" if tuned_side == "A" else "A")
    await vote_final(emu, reply, side, VOTERS)


async def turn_on(emu: DiscordEmulator, **options) -> InteractionRecord:
    record = await emu.slash_command(
        "loop set",
        {"enabled": True, "channel": emu.channel.id, "min_examples": 8, "min_votes": 6, **options},
        user="manager",
    )
    return record


async def start(emu: DiscordEmulator, db: Path, engine: ReplayEngine, **changes):
    community(emu)
    return muse(emu, db, engine, loop_command=TUNE, loop_check_s=0.2, user_per_minute=0,
                **changes)  # fmt: skip


async def test_the_loop_tunes_checks_battles_and_promotes_by_itself(tmp_path: Path):
    db = tmp_path / "muse.db"
    engine = TwoVoices()
    async with DiscordEmulator() as emu:
        other = emu.create_guild("Other")
        both = (emu.guild.id, other.id)
        async with await start(emu, db, engine, guild_ids=both) as bot:
            assert "Manage Server" in await refusal(
                await emu.slash_command("loop set", {"enabled": True})
            )
            status = (await answered(await emu.slash_command("loop status"))).content
            assert "off" in status and "0 of 50" in status
            await collect(emu, 3)  # three rows: each member supplies a third, over the share
            shown = (await answered(await emu.slash_command("loop status"))).content
            assert "State: **collecting**" in shown and "0 of 50" in shown
            await collect(emu)
            saved = (await ephemeral(await turn_on(emu))).content
            assert saved.startswith("✅ Saved.") and "of 8 needed" in saved
            name = f"g{emu.guild.id}-v1"
            assert await eventually(
                lambda: announced(emu, f"A new model, **{name}**"), timeout_s=60
            )
            assert name in engine.models()  # served without a restart
            assert [e for (e,) in rows(db, "SELECT event FROM loop_events")] == ["tuned", "arena"]
            shown = (await answered(await emu.slash_command("loop status"))).content
            assert f"Challenger: **{name}**" in shown and "State: **arena**" in shown

            # a second server sees none of it
            listed = await refusal(await emu.slash_command("model", {}, user="owner", guild=other))
            assert name not in listed
            assert "needs two models" in await refusal(
                await emu.slash_command("arena", {"prompt": "rain"}, guild=other)
            )

            for _ in range(2):
                await battle(emu, prefer_tuned=True)
            assert await eventually(
                lambda: announced(emu, f"🏆 **{name}** beat **base**"), timeout_s=30
            )
            after = await finished(await emu.slash_command("generate", {"prompt": "Hello"}))
            assert after.original.content.startswith(MARKER)
            plain = await finished(
                await emu.slash_command("generate", {"prompt": "Hello"}, guild=other)
            )
            assert MARKER not in plain.original.content

            back = (await ephemeral(
                await emu.slash_command("loop rollback", user="manager")
            )).content  # fmt: skip
            assert "**base** writes this server's texts again" in back
            again = await finished(await emu.slash_command("generate", {"prompt": "Hello"}))
            assert MARKER not in again.original.content
            assert await bot.app.store.get_model(name) is not None
            assert (await bot.app.store.get_model(name)).retired
    events = [e for (e,) in rows(db, "SELECT event FROM loop_events ORDER BY id")]
    assert events == ["tuned", "arena", "promoted", "rolled_back"]


async def test_a_challenger_the_voters_reject_is_retired(tmp_path: Path):
    db = tmp_path / "muse.db"
    async with DiscordEmulator() as emu, await start(emu, db, TwoVoices()) as bot:
        await collect(emu)
        await ephemeral(await turn_on(emu))
        name = f"g{emu.guild.id}-v1"
        assert await eventually(lambda: announced(emu, f"A new model, **{name}**"), timeout_s=60)
        for _ in range(2):
            await battle(emu, prefer_tuned=False)
        assert await eventually(lambda: announced(emu, f"🗄️ **{name}** was retired"), timeout_s=30)
        assert (await bot.app.store.get_guild_settings(emu.guild.id)).default_model is None
        assert (await bot.app.store.get_loop(emu.guild.id)).state == "collecting"
        assert name not in bot.app.engine.models()  # no longer loaded


async def test_the_loop_passes_its_step_cap_to_the_tune(tmp_path: Path):
    db = tmp_path / "muse.db"
    async with DiscordEmulator() as emu, await start(emu, db, TwoVoices(), loop_max_steps=3) as bot:
        await collect(emu)
        await ephemeral(await turn_on(emu))
        name = f"g{emu.guild.id}-v1"
        assert await eventually(lambda: announced(emu, f"A new model, **{name}**"), timeout_s=60)
        assert (await bot.app.store.get_model(name)).data["max_steps"] == 3


async def test_a_bot_restarted_while_checking_keeps_the_challenger_it_serves_already(
    tmp_path: Path,
):
    db = tmp_path / "muse.db"
    engine = Strict()
    async with DiscordEmulator() as emu:
        name = f"g{emu.guild.id}-v1"
        engine.adapters.append(name)  # at start the engine loads every registered adapter
        async with Store.open(db) as store:
            metrics = {"before": {"loss": 2.0}, "after": {"loss": 1.0}}
            record = ModelRecord(name, "replay-model", f"/adapters/{name}", "sft",
                                 metrics=metrics, owner_guild_id=emu.guild.id)  # fmt: skip
            await store.register_model(record)
            await store.update_loop(emu.guild.id, enabled=True, channel_id=emu.channel.id,
                                    state="checking", challenger=name)  # fmt: skip
        async with await start(emu, db, engine) as bot:
            assert await eventually(
                lambda: announced(emu, f"A new model, **{name}**"), timeout_s=30
            )
            assert not (await bot.app.store.get_model(name)).retired


async def test_a_tune_whose_loss_got_worse_never_battles(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FAKE_TUNE_LOSS", "worse")
    db = tmp_path / "muse.db"
    engine = TwoVoices()
    async with DiscordEmulator() as emu, await start(emu, db, engine):
        await collect(emu)
        await ephemeral(await turn_on(emu))
        name = f"g{emu.guild.id}-v1"
        assert await eventually(
            lambda: announced(emu, "held-out loss did not improve"), timeout_s=60
        )
        assert name not in engine.models()
    assert rows(db, "SELECT retired_reason IS NOT NULL FROM models") == [(1,)]


async def test_forget_retires_the_model_a_member_trained_and_restores_the_default(
    tmp_path: Path,
):
    db = tmp_path / "muse.db"
    async with DiscordEmulator() as emu, await start(emu, db, TwoVoices()) as bot:
        bot: MuseBot
        await collect(emu)
        await ephemeral(await turn_on(emu))
        name = f"g{emu.guild.id}-v1"
        assert await eventually(lambda: announced(emu, f"A new model, **{name}**"), timeout_s=60)
        for _ in range(2):
            await battle(emu, prefer_tuned=True)
        assert await eventually(lambda: announced(emu, "🏆"), timeout_s=30)

        ask = await ephemeral(await emu.slash_command("forget", user="alice"))
        alice = emu.user("alice").id
        confirm = await emu.press_button(ask, f"muse:forget:{alice}", user="alice")
        await confirm.wait_callback()
        assert await eventually(lambda: "Done" in ask.content, timeout_s=15)
        assert "tuned models retired" in ask.content
        assert await eventually(lambda: announced(emu, f"🗄️ **{name}** retired"), timeout_s=15)
        assert (await bot.app.store.get_model(name)).retired
        assert name not in bot.app.engine.models()
        after = await finished(await emu.slash_command("generate", {"prompt": "Hi"}, user="bob"))
        assert MARKER not in after.original.content


class StillLoading(TwoVoices):
    """An engine that has not finished loading: it names no model yet."""

    def models(self) -> list[str]:
        return []


async def test_a_registered_model_is_accepted_while_the_engine_still_loads(tmp_path: Path):
    db = tmp_path / "muse.db"
    async with DiscordEmulator() as emu, await start(emu, db, StillLoading()) as bot:
        mine = f"g{emu.guild.id}-v1"
        for name, owner in ((mine, emu.guild.id), ("elsewhere", emu.guild.id + 1)):
            record = ModelRecord(name, "replay-model", f"/a/{name}", "sft", owner_guild_id=owner)
            await bot.app.store.register_model(record)
        chosen = await refusal(await emu.slash_command("model", {"name": mine}, user="manager"))
        assert f"now come from **{mine}**" in chosen
        other = await refusal(
            await emu.slash_command("model", {"name": "elsewhere"}, user="manager")
        )
        assert "is not a model Muse serves" in other and "elsewhere" not in other.split("of")[-1]


async def test_loop_tune_says_what_is_missing_then_starts_a_tune_now(tmp_path: Path):
    db = tmp_path / "muse.db"
    async with DiscordEmulator() as emu, await start(emu, db, TwoVoices()):
        off = await emu.slash_command("loop tune", user="manager")
        assert "loop is off" in (await answered(off)).content
        await ephemeral(await turn_on(emu, min_examples=100000))  # never by itself
        early = await emu.slash_command("loop tune", user="manager")
        assert "Not enough to tune on yet: would not train" in (await answered(early)).content
        await collect(emu)
        now = await emu.slash_command("loop tune", user="manager")
        assert "Tuning started" in (await answered(now)).content
        name = f"g{emu.guild.id}-v1"
        assert await eventually(lambda: announced(emu, f"A new model, **{name}**"), timeout_s=60)
        assert "Manage Server" in await refusal(await emu.slash_command("loop tune"))
