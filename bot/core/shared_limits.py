"""The limits that hold across processes: `MUSE_USER_PER_MINUTE` (or the guild's
`per_user_per_minute`), one running generation per user and `MUSE_GUILD_CONCURRENCY`, decided
by the database every shard process shares (`storage.slots`), after this process's own count
(`bot.core.limits`) let the start through.
"""

from __future__ import annotations

import logging

from bot.core.app import Muse
from bot.core.errors import storage_problem
from bot.core.limits import ALREADY_RUNNING, Limited, Slot, guild_busy, too_many_starts
from storage.slots import SlotRefused

log = logging.getLogger("muse.bot.core.shared_limits")


async def share(app: Muse, slot: Slot, per_minute: int) -> None:
    """Take the database's slot for `slot` (freed when `slot` is released), or withdraw `slot`
    and raise `Limited` with the same answer the in-process limit gives."""
    cap = app.settings.guild_concurrency
    try:
        shared = await app.store.take_slot(
            slot.user_id,
            slot.guild_id,
            per_minute=per_minute,
            guild_cap=cap,
            now_s=slot.started if slot.started is not None else app.limits.clock(),
        )
    except SlotRefused as refused:
        slot.withdraw()
        if refused.rule == "running":
            raise Limited(ALREADY_RUNNING) from None
        if refused.rule == "per_minute":
            raise too_many_starts(per_minute, refused.retry_after_s or 0.0) from None
        raise guild_busy(cap) from None
    except Exception as exc:
        problem = storage_problem(exc)
        if problem is None:
            slot.withdraw()
            raise
        # a database that cannot be written never stops a text (`bot.core.records`)
        log.warning("limits counted in this process only: %s (%s)", problem, exc)
        return
    except BaseException:
        slot.withdraw()
        raise
    slot.on_release = lambda: app.store.release_slot_soon(shared)
