"""Which model writes a guild's texts: its default (`/model`, `muse models default`), else the
default for every guild, else the base. A default that is retired, not served, or owned by
another guild falls back to the base, with a log line saying why.

A guild sees only host-wide models and its own (`ModelRecord.visible_to`): a model trained on
one server's texts can repeat them, so it never writes, battles or ranks on another server."""

from __future__ import annotations

import logging

from bot.core.app import Muse
from storage.rows import GuildSettings, ModelRecord

log = logging.getLogger("muse.bot.core.model_choice")

BASE = "base"  # what users call the base model
ALL_GUILDS = -1  # the guild-settings row that holds the default for every other guild


async def default_model(app: Muse, settings: GuildSettings, guild_id: int | None) -> str | None:
    """The name of the registered model the guild's texts come from (None: the base)."""
    name = settings.default_model
    if name is None:
        name = (await app.store.get_guild_settings(ALL_GUILDS)).default_model
    if not name:
        return None
    return await served(app, name, guild_id)


async def served(app: Muse, name: str, guild_id: int | None) -> str | None:
    """`name` when it is registered, not retired, the guild's to see, and served; else None
    (the base), logged."""
    record = await app.store.get_model(name)
    if record is None or record.retired:
        why = "retired" if record is not None else "not registered"
    elif not record.visible_to(guild_id):
        why = f"another server's, not guild {guild_id}'s"
    elif (served_now := app.engine.models()) and name not in served_now:
        why = "not served by the engine"
    else:  # served, or the engine is still loading (it loads registered adapters first)
        return name
    log.warning("model %r is %s: using the base model", name, why)
    return None


async def visible(app: Muse, guild_id: int | None) -> list[ModelRecord]:
    """The registered models a guild may see and use (not retired), newest first."""
    return [m for m in await app.store.list_models() if m.visible_to(guild_id)]


async def choices(app: Muse, guild_id: int | None) -> list[str]:
    """What `/model` offers a guild: the base, then every model it may see that is not retired."""
    return [BASE, *(m.name for m in await visible(app, guild_id))]
