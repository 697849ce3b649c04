"""Which model writes a guild's texts: its default (`/model`, `muse models default`), else the
default for every guild, else the base. A default that is retired or not served falls back to
the base, with a log line saying why."""

from __future__ import annotations

import logging

from bot.core.app import Muse
from storage.models import GuildSettings

log = logging.getLogger("muse.bot.core.models")

BASE = "base"  # what users call the base model
ALL_GUILDS = -1  # the guild-settings row that holds the default for every other guild


async def default_model(app: Muse, settings: GuildSettings) -> str | None:
    """The name of the registered model the guild's texts come from (None: the base)."""
    name = settings.default_model
    if name is None:
        name = (await app.store.get_guild_settings(ALL_GUILDS)).default_model
    if not name:
        return None
    return await served(app, name)


async def served(app: Muse, name: str) -> str | None:
    """`name` when it is registered, not retired and served; else None (the base), logged."""
    record = await app.store.get_model(name)
    if record is None or record.retired:
        why = "retired" if record is not None else "not registered"
    elif name not in app.engine.models():
        why = "not served by the engine (restart Muse after `muse tune`)"
    else:
        return name
    log.warning("model %r is %s: using the base model", name, why)
    return None


async def choices(app: Muse) -> list[str]:
    """What `/model` offers: the base, then every registered model that is not retired."""
    return [BASE, *(m.name for m in await app.store.list_models())]
