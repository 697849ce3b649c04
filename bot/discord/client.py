"""MuseBot: the discord.py client; dependencies come in as keyword arguments."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import discord
from discord.ext import commands

from bot.core.app import Muse
from bot.core.choices import option_choices
from bot.core.settings import Settings
from bot.discord.app_errors import check_option_types, on_app_command_error
from bot.discord.buttons import DYNAMIC_ITEMS, VIEWS
from bot.discord.choices import offer_choices
from bot.discord.recovery import start_reclaiming, start_recovery
from bot.discord.sharding import ShardPlan, plan_shards
from generation.backend import Backend
from generation.tasks.presets import Preset
from storage.store import Store

log = logging.getLogger("muse.bot.discord.client")

EXTENSIONS = (
    "bot.discord.cogs.generation",
    "bot.discord.cogs.chat",
    "bot.discord.cogs.account",
    "bot.discord.cogs.admin",
    "bot.discord.cogs.persona",
    "bot.discord.cogs.model",
    "bot.discord.cogs.arena",
    "bot.discord.cogs.loop",
)


def intents_for(settings: Settings) -> discord.Intents:
    """The default intents; the privileged Message Content one only with `MUSE_MESSAGE_CONTENT`."""
    intents = discord.Intents.default()
    intents.message_content = settings.message_content
    return intents


class MuseBot(commands.Bot):
    """Loads the command cogs, registers the persistent buttons, syncs the commands. `app` is
    the application every handler works on (`bot.discord.context.app_of`)."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        engine: Backend,
        presets: dict[str, Preset],
        intents: discord.Intents | None = None,
        loop_command: Sequence[str] | None = None,
        **options: Any,
    ) -> None:
        """`loop_command`: the command line of one tune (`muse loop tune`), which the learning
        loop runs in a child process; None: no loop runs in this process."""
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents or intents_for(settings),
            allowed_mentions=discord.AllowedMentions.none(),
            help_command=None,
            **options,
        )
        self.app = Muse(settings=settings, store=store, engine=engine, presets=presets)
        self.recovery: asyncio.Task[int] | None = None
        self.reclaiming: asyncio.Task[None] | None = None
        self.loop_command = tuple(loop_command) if loop_command is not None else None

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        offer_choices(self.tree, option_choices(self.app.presets))  # before the sync
        self.add_dynamic_items(*DYNAMIC_ITEMS)
        self.tree.interaction_check = check_option_types  # type: ignore[method-assign]
        self.tree.on_error = on_app_command_error  # type: ignore[method-assign]
        await self.sync_commands()
        self.recovery = start_recovery(self, self.app, VIEWS)  # replies a crash cut off say so
        self.reclaiming = start_reclaiming(self, self.app, VIEWS)  # and other processes' crashes

    async def close(self) -> None:
        if self.reclaiming is not None:
            self.reclaiming.cancel()
        await super().close()

    async def sync_commands(self) -> None:
        """To `MUSE_GUILD_IDS` (instant) when set, else globally (may take an hour to show)."""
        if not self.app.settings.guild_ids:
            synced = await self.tree.sync()
            log.info("synced %d global commands", len(synced))
            return
        for guild_id in self.app.settings.guild_ids:
            guild = discord.Object(guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to guild %s", len(synced), guild_id)

    async def on_ready(self) -> None:
        log.info("connected as %s to %d guild(s)", self.user, len(self.guilds))


class ShardedMuseBot(MuseBot, commands.AutoShardedBot):
    """MuseBot as an `AutoShardedBot`: the shards of `MUSE_SHARDS` / `MUSE_SHARD_IDS`.

    `commands.Bot` and `commands.AutoShardedBot` add nothing to their common bases, so this
    MRO puts `AutoShardedClient` before `Client`: the gateway is discord.py's sharded one.
    """

    def __init__(self, *, settings: Settings, **kwargs: Any) -> None:
        plan = plan_shards(settings) or ShardPlan(count=None)
        self.shard_plan = plan
        shard_ids = list(plan.ids) if plan.ids is not None else None
        super().__init__(settings=settings, shard_count=plan.count, shard_ids=shard_ids, **kwargs)

    async def on_ready(self) -> None:
        log.info(
            "connected as %s to %d guild(s) on shard(s) %s of %s",
            self.user,
            len(self.guilds),
            ",".join(str(i) for i in sorted(self.shards)),
            self.shard_count,
        )


def create_bot(
    *,
    settings: Settings,
    store: Store,
    engine: Backend,
    presets: dict[str, Preset],
    loop_command: Sequence[str] | None = None,
) -> MuseBot:
    """A `MuseBot`, or a `ShardedMuseBot` when `MUSE_SHARDS` is set (raises `SettingsError`
    for shard settings that do not fit together)."""
    cls = ShardedMuseBot if plan_shards(settings) is not None else MuseBot
    return cls(
        settings=settings, store=store, engine=engine, presets=presets, loop_command=loop_command
    )
