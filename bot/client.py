"""MuseBot: the discord.py client; dependencies come in as keyword arguments."""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord.ext import commands

from bot.limits import Limits
from bot.settings import Settings
from bot.streaming import EDIT_INTERVAL_S, ActiveRun
from bot.views import DYNAMIC_ITEMS
from generation.presets import Preset
from storage.store import Store

log = logging.getLogger("muse.bot.client")

EXTENSIONS = (
    "bot.cogs.generation",
    "bot.cogs.chat",
    "bot.cogs.account",
    "bot.cogs.admin",
)


def intents_for(settings: Settings) -> discord.Intents:
    """The default intents; the privileged Message Content one only with `MUSE_MESSAGE_CONTENT`."""
    intents = discord.Intents.default()
    intents.message_content = settings.message_content
    return intents


class MuseBot(commands.Bot):
    """Loads the command cogs, registers the persistent buttons, syncs the commands."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        engine: Any,
        presets: dict[str, Preset],
        intents: discord.Intents | None = None,
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents or intents_for(settings),
            allowed_mentions=discord.AllowedMentions.none(),
            help_command=None,
        )
        self.settings = settings
        self.store = store
        self.engine = engine
        self.presets = presets
        self.active: dict[int, ActiveRun] = {}
        self.limits = Limits(guild_concurrency=settings.guild_concurrency)
        self.edit_interval_s = EDIT_INTERVAL_S

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(*DYNAMIC_ITEMS)
        await self.sync_commands()

    async def sync_commands(self) -> None:
        """To `MUSE_GUILD_IDS` (instant) when set, else globally (may take an hour to show)."""
        if not self.settings.guild_ids:
            synced = await self.tree.sync()
            log.info("synced %d global commands", len(synced))
            return
        for guild_id in self.settings.guild_ids:
            guild = discord.Object(guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to guild %s", len(synced), guild_id)

    async def on_ready(self) -> None:
        log.info("connected as %s to %d guild(s)", self.user, len(self.guilds))
