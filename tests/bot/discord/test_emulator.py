"""The Discord emulator, proved with the real discord.py: a tiny bot driven end to end."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.discord_emulator import EPHEMERAL, DiscordEmulator, InteractionRecord, run_bot

# --- the tiny bot ---------------------------------------------------------------------------


class VoteButton(discord.ui.DynamicItem[discord.ui.Button], template=r"emu:vote:(?P<n>\d+)"):
    """A persistent button whose state lives in its custom id."""

    def __init__(self, n: int) -> None:
        super().__init__(discord.ui.Button(label="Vote", custom_id=f"emu:vote:{n}"))
        self.n = n

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> VoteButton:
        return cls(int(match["n"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        interaction.client.events.append(("vote", self.n, interaction.user.id))  # type: ignore[attr-defined]
        await interaction.response.edit_message(content=f"voted for take {self.n}")


class ThanksView(discord.ui.View):
    """A plain view on a followup."""

    @discord.ui.button(label="Thanks", custom_id="emu:thanks")
    async def thanks(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        interaction.client.events.append(("thanks", interaction.user.id))  # type: ignore[attr-defined]
        await interaction.response.send_message("you're welcome", ephemeral=True)


class RateModal(discord.ui.Modal, title="Rate this take"):
    """One text input in an action row, one inside a Label (type 18)."""

    stars = discord.ui.TextInput(label="Stars (1-5)", custom_id="stars", max_length=1)
    comment = discord.ui.Label(
        text="Comment",
        component=discord.ui.TextInput(
            custom_id="comment", style=discord.TextStyle.long, required=False
        ),
    )

    async def on_submit(self, interaction: discord.Interaction) -> None:
        text_input = self.comment.component
        assert isinstance(text_input, discord.ui.TextInput)
        interaction.client.events.append(("rated", self.stars.value, text_input.value))  # type: ignore[attr-defined]
        await interaction.response.send_message(f"{self.stars.value} stars", ephemeral=True)


class TinyBot(commands.Bot):
    """Two app commands synced to one guild, plus thread chat."""

    def __init__(self, guild_id: int) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.guild_id = guild_id
        self.events: list[tuple[Any, ...]] = []
        self.gate: asyncio.Event | None = None

    async def setup_hook(self) -> None:
        guild = discord.Object(self.guild_id)
        self.add_dynamic_items(VoteButton)
        self.tree.add_command(write, guild=guild)
        self.tree.add_command(rate, guild=guild)
        await self.tree.sync(guild=guild)

    async def on_resumed(self) -> None:
        self.events.append(("resumed",))

    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or not isinstance(message.channel, discord.Thread):
            return
        await message.channel.send(f"echo: {message.content}")


@app_commands.command()
@app_commands.describe(prompt="What to write about", count="Edits", temperature="Sampling")
async def write(
    interaction: discord.Interaction[TinyBot],
    prompt: str,
    count: app_commands.Range[int, 1, 5] = 3,
    temperature: float = 0.7,
) -> None:
    """Write in steps: defer, stream edits, then a followup with a file and a button."""
    bot = interaction.client
    bot.events.append(("write", prompt, count, temperature))
    await interaction.response.defer()
    if bot.gate is not None:
        await bot.gate.wait()
    try:
        for step in range(1, count + 1):
            await interaction.edit_original_response(content=f"{prompt} … {step}/{count}")
        view = discord.ui.View(timeout=None).add_item(VoteButton(7))
        await interaction.edit_original_response(content=f"{prompt}, done", view=view)
        await interaction.followup.send(
            f"script for <@{interaction.user.id}>",
            file=discord.File(io.BytesIO(prompt.encode()), "script.txt"),
            view=ThanksView(),
        )
    except discord.HTTPException as exc:
        bot.events.append(("http_error", exc.status, exc.code))
        assert isinstance(interaction.channel, discord.abc.Messageable)
        message = await interaction.channel.send(f"{prompt} (posted in the channel)")
        await message.create_thread(name=f"{prompt} thread")


@app_commands.command()
async def rate(interaction: discord.Interaction[TinyBot]) -> None:
    """Rate with a modal."""
    await interaction.response.send_modal(RateModal())


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
async def emu_bot() -> AsyncIterator[tuple[DiscordEmulator, TinyBot]]:
    """An emulator with a connected, ready TinyBot."""
    async with DiscordEmulator() as emu, run_bot(TinyBot(emu.guild.id), emu) as bot:
        yield emu, bot


async def finished_write(emu: DiscordEmulator, **options: Any) -> InteractionRecord:
    """Run /write and wait until it has posted its followup."""
    interaction = await emu.slash_command("write", {"prompt": "a dragon", **options})
    return await interaction.wait_until(lambda i: i.followups)


# --- tests ----------------------------------------------------------------------------------


async def test_commands_are_synced_with_typed_options(emu_bot: tuple[DiscordEmulator, TinyBot]):
    emu, _ = emu_bot
    synced = {c["name"]: c for c in emu.commands()}
    assert set(synced) == {"write", "rate"} and emu.commands(global_=True) == []
    options = {o["name"]: o for o in synced["write"]["options"]}
    assert [o["name"] for o in synced["write"]["options"]] == ["prompt", "count", "temperature"]
    assert (options["prompt"]["type"], options["prompt"]["required"]) == (3, True)
    assert (options["count"]["type"], options["count"]["min_value"]) == (4, 1)
    assert options["temperature"]["type"] == 10 and not options["temperature"].get("required")
    assert synced["write"]["description"].startswith("Write in steps")


async def test_deferred_edits_followup_file_and_mentions(emu_bot: tuple[DiscordEmulator, TinyBot]):
    emu, bot = emu_bot
    interaction = await finished_write(emu, count="2", temperature=1)

    assert ("write", "a dragon", 2, 1.0) in bot.events
    assert isinstance(bot.events[-1][3], float)  # typed from the synced definition
    assert interaction.callback_type == 5 and interaction.deferred
    assert interaction.callback_ms is not None and interaction.callback_ms < 3000
    original = interaction.original
    assert original is not None and not original.loading
    assert [v.content for v in original.history] == [
        "",
        "a dragon … 1/2",
        "a dragon … 2/2",
        "a dragon, done",
    ]
    assert original.history[0].flags & 128  # "thinking…"
    assert original.custom_ids() == ["emu:vote:7"]
    (followup,) = interaction.followups
    assert followup.attachments[0].filename == "script.txt"
    assert followup.attachments[0].data == b"a dragon"
    assert followup.custom_ids() == ["emu:thanks"]
    assert followup.content == f"script for <@{emu.user('alice').id}>"
    assert all(m.pings_no_one for m in interaction.messages)
    assert all(v.allowed_mentions == {"parse": []} for v in original.edits)


async def test_buttons_reach_view_and_dynamic_item(emu_bot: tuple[DiscordEmulator, TinyBot]):
    emu, bot = emu_bot
    interaction = await finished_write(emu)
    assert interaction.original is not None

    thanks = await emu.press_button(interaction.followups[0], "emu:thanks", user="bob")
    await thanks.wait_until(lambda i: i.original)
    assert ("thanks", emu.user("bob").id) in bot.events
    assert thanks.callback_type == 4 and thanks.original is not None
    assert thanks.original.flags & EPHEMERAL and thanks.original.content == "you're welcome"

    vote = await emu.press_button(interaction.original, "emu:vote:7", user="moderator")
    await vote.wait_callback()
    assert ("vote", 7, emu.user("moderator").id) in bot.events
    assert vote.callback_type == 7
    assert interaction.original.content == "voted for take 7"
    assert interaction.original.history[-1].source == "callback 7"


async def test_modal_submit_reaches_on_submit(emu_bot: tuple[DiscordEmulator, TinyBot]):
    emu, bot = emu_bot
    shown = await emu.slash_command("rate")
    await shown.wait_callback()
    assert shown.callback_type == 9 and shown.modal is not None
    assert [c["type"] for c in shown.modal["components"]] == [1, 18]

    submitted = await emu.submit_modal(shown, {"stars": "4", "Comment": "lovely dragon"})
    await submitted.wait_until(lambda i: i.original)
    assert ("rated", "4", "lovely dragon") in bot.events
    assert submitted.original is not None and submitted.original.ephemeral
    assert submitted.user.id == shown.user.id


async def test_rate_limited_edits_are_retried(emu_bot: tuple[DiscordEmulator, TinyBot]):
    emu, _ = emu_bot
    emu.faults.rate_limit(every=2, path="@original$", retry_after=0.05)  # PATCH by default
    interaction = await emu.slash_command("write", {"prompt": "a dragon", "count": 3})
    await interaction.wait_finished()

    statuses = [r.status for r in emu.state.requests if r.path.endswith("/@original")]
    assert statuses == [200, 429, 200, 429, 200, 429, 200]
    assert emu.faults.count(429) == 3
    assert interaction.original is not None
    assert [v.content for v in interaction.original.edits] == [
        "a dragon … 1/3",
        "a dragon … 2/3",
        "a dragon … 3/3",
        "a dragon, done",
    ]
    assert len(interaction.followups) == 1


async def test_gateway_drop_resumes_and_replays(emu_bot: tuple[DiscordEmulator, TinyBot]):
    emu, bot = emu_bot
    assert await emu.drop_gateway() == 1
    missed = await emu.slash_command("rate")  # sent while down: replayed on RESUME
    await emu.wait_for(lambda: emu.gateway.count("resumed") == 1)
    await missed.wait_callback()
    await emu.wait_for(lambda: ("resumed",) in bot.events)
    assert emu.gateway.count("identify") == 1  # resumed, not re-identified

    after = await finished_write(emu, count=1)
    assert after.original is not None and after.original.content == "a dragon, done"


async def test_expired_token_gets_50027_and_bot_falls_back(
    emu_bot: tuple[DiscordEmulator, TinyBot],
):
    emu, bot = emu_bot
    bot.gate = asyncio.Event()
    interaction = await emu.slash_command("write", {"prompt": "late"})
    await interaction.wait_callback()
    interaction.expire()
    bot.gate.set()

    await emu.wait_for(lambda: emu.threads())
    assert ("http_error", 401, 50027) in bot.events
    assert interaction.errors == [("PATCH @original", 401, 50027)]
    (fallback,) = [m for m in emu.bot_messages() if m.kind == "channel"]
    assert fallback.content == "late (posted in the channel)"


async def test_thread_chat_reaches_on_message(emu_bot: tuple[DiscordEmulator, TinyBot]):
    emu, bot = emu_bot
    bot.gate = asyncio.Event()
    interaction = await emu.slash_command("write", {"prompt": "chat"})
    await interaction.wait_callback()
    interaction.expire()  # the bot falls back to a channel message and opens a thread
    bot.gate.set()
    thread = await emu.wait_for(lambda: emu.threads() and emu.threads()[0])
    await emu.wait_for(lambda: isinstance(bot.get_channel(thread.id), discord.Thread))

    await emu.send_message(thread, "hello there", user="bob")
    reply = await emu.wait_for(lambda: [m for m in emu.bot_messages(thread)])
    assert reply[0].content == "echo: hello there"


class ShardedPing(commands.AutoShardedBot):
    """A global /ping on an auto-sharded bot (shard count from GET /gateway/bot)."""

    def __init__(self) -> None:
        super().__init__(command_prefix=commands.when_mentioned, intents=discord.Intents.default())
        self.pings: list[tuple[int | None, int | None]] = []

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """No 5 s pause between IDENTIFYs: the emulator has no identify rate limit."""

    async def setup_hook(self) -> None:
        @app_commands.command()
        async def ping(interaction: discord.Interaction) -> None:
            """Ping."""
            guild = interaction.guild
            self.pings.append((interaction.guild_id, guild and guild.shard_id))
            await interaction.response.send_message("pong")

        self.tree.add_command(ping)
        await self.tree.sync()


async def test_sharded_bot_gets_each_guild_on_its_shard():
    async with DiscordEmulator(guilds=3, shards=2) as emu, run_bot(ShardedPing(), emu) as bot:
        assert bot.shard_count == 2 and len(emu.gateway.live_sessions()) == 2
        assert {g.id: g.shard_id for g in bot.guilds} == {
            g.id: (g.id >> 22) % 2 for g in emu.guilds
        }
        for guild in emu.guilds:
            await (await emu.slash_command("ping", guild=guild)).wait_callback()
        assert bot.pings == [(g.id, (g.id >> 22) % 2) for g in emu.guilds]

        await emu.invalidate_session(shard_id=0)  # not resumable: shard 0 identifies again
        await emu.wait_for(lambda: emu.gateway.count("identify") == 3)
        await emu.wait_connected(sessions=2)
        shard0 = next(g for g in emu.guilds if (g.id >> 22) % 2 == 0)
        await (await emu.slash_command("ping", guild=shard0)).wait_callback()
        assert bot.pings[-1] == (shard0.id, 0)
