"""After a crash (SIGKILL, power loss, the engine watchdog's exit): the replies of the
generations the store found still `running` (and marked `interrupted`) are edited to say
what happened, with a 🔁 button to try again.

The store remembers each generation's channel and reply message (the deferred response's id is
recorded with the row), so the reply is edited as a channel message: that works whether or not
the interaction's 15-minute token is still valid.

Several processes may share the database: each edits the replies of the generations it found
orphaned (their owner gone: see `storage.owners`), at start and then every `RECLAIM_S`, so a
process that dies while others live has its replies fixed by whichever notices first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import discord

from bot.core.app import Muse
from bot.core.texts import finish_note
from bot.discord import rendering
from bot.discord.context import NO_MENTIONS
from storage.errors import StoreClosed
from storage.instances import HEARTBEAT_S

log = logging.getLogger("muse.bot.discord.recovery")

#: How often a live process looks for generations whose process is gone: a heartbeat's
#: interval, so a dead process's replies say so soon after its heartbeat expires.
RECLAIM_S = HEARTBEAT_S


class RetryViews(Protocol):
    def retry(self, generation_id: int) -> discord.ui.View: ...


def start_recovery(
    client: discord.Client, app: Muse, views: RetryViews
) -> asyncio.Task[int] | None:
    """Edit the interrupted replies in the background (from `setup_hook`); None if none."""
    ids = tuple(app.store.interrupted)
    if not ids:
        return None
    task = edit_interrupted(client, app, views, ids)
    return asyncio.create_task(task, name="muse-recovery")


def start_reclaiming(
    client: discord.Client, app: Muse, views: RetryViews, every_s: float = RECLAIM_S
) -> asyncio.Task[None]:
    """Look for other processes' orphaned generations in the background (cancel at close)."""
    return asyncio.create_task(reclaim_forever(client, app, views, every_s), name="muse-reclaim")


async def reclaim_forever(
    client: discord.Client, app: Muse, views: RetryViews, every_s: float
) -> None:
    """Every `every_s`: mark the generations of gone processes interrupted, edit their replies."""
    while True:
        await asyncio.sleep(every_s)
        try:
            ids = await app.store.reclaim_orphans()
        except StoreClosed:
            return
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            log.warning("could not look for generations of gone processes: %s", exc)
            continue
        if ids:
            await edit_interrupted(client, app, views, ids)


async def edit_interrupted(
    client: discord.Client, app: Muse, views: RetryViews, generation_ids: tuple[int, ...]
) -> int:
    """Edit each reply; a reply that cannot be edited is logged and skipped. Returns how many
    were edited."""
    edited = 0
    for generation_id in generation_ids:
        try:
            edited += await edit_reply(client, app, views, generation_id)
        except discord.HTTPException as exc:
            log.warning("could not edit the reply of generation %s: %s", generation_id, exc)
        except Exception:  # noqa: BLE001 - one bad row must not stop the others
            log.exception("could not edit the reply of generation %s", generation_id)
    log.info("edited %d of %d interrupted replies", edited, len(generation_ids))
    return edited


async def edit_reply(
    client: discord.Client, app: Muse, views: RetryViews, generation_id: int
) -> bool:
    """Keep the partial text shown, add the note and 🔁; False when there is nothing to edit."""
    generation = await app.store.get_generation(generation_id)
    if generation is None or generation.status != "interrupted":
        return False
    if not generation.channel_id or not generation.message_id:
        log.info("generation %s has no reply message to edit", generation_id)
        return False
    channel = client.get_partial_messageable(generation.channel_id)
    message = channel.get_partial_message(generation.message_id)
    try:
        shown = (await message.fetch()).content
    except discord.NotFound:
        return False
    view = views.retry(generation_id)
    await message.edit(content=interrupted_text(shown), view=view, allowed_mentions=NO_MENTIONS)
    return True


def interrupted_text(shown: str, limit: int = 2000) -> str:
    """The partial text a reply showed (without the in-progress marker), then the note."""
    text = shown.strip()
    if text.endswith(rendering.IN_PROGRESS):
        text = text[: -len(rendering.IN_PROGRESS)].rstrip()
    if text.startswith("⏳"):  # "⏳ writing…" or "⏳ Queued — position N": no text yet
        text = ""
    note = finish_note("interrupted")
    room = limit - len(note) - 2
    if len(text) > room:
        text = text[: room - 1] + "…"
    return f"{text}\n\n{note}" if text else note
