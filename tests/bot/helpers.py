"""What the bot tests share: the token cap, settings for an emulated guild, the bot factory."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.core.settings import Settings
from bot.discord.client import MuseBot
from tests.discord_emulator import DiscordEmulator

MAX_TOKENS = 24


def cache_dir() -> Path:
    return Path(os.environ.get("MUSE_CACHE_DIR") or Path.home() / ".cache" / "muse")


def make_settings(emu: DiscordEmulator, db_path: Path, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "guild_ids": (emu.guild.id,),
        "db_path": db_path,
        "max_tokens": MAX_TOKENS,
        "timeout_s": 60.0,
    }
    return Settings(**(values | changes))


BotFactory = Callable[..., contextlib.AbstractAsyncContextManager[MuseBot]]
