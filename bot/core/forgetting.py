"""/forget: every row about a member deleted, every model their rows trained retired — and the
guilds those models served told, their defaults put back (the loop's `models_retired`)."""

from __future__ import annotations

from bot.core.app import Muse
from storage.retention import FORGOTTEN_CONTRIBUTOR


async def forget(app: Muse, user_id: int) -> dict[str, int]:
    """Forget the member; counts per table (`models`: retired), as the store reports them."""
    trained = await app.store.models_trained_on(user_id)
    counts = await app.store.forget_user(user_id)
    if trained and app.loop is not None:
        await app.loop.models_retired(trained, FORGOTTEN_CONTRIBUTOR)
    return counts
