"""What the buttons (and the console's keys) do, front-end free: each returns what to say."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.core import scenes
from bot.core.app import Muse
from bot.core.texts import (
    COMPARISON_GONE,
    FINAL_VOTE,
    GONE,
    NOT_YOURS,
    thanks_rating,
    thanks_vote,
)
from storage.errors import GenerationGone
from storage.rows import Generation

log = logging.getLogger("muse.bot.core.actions")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who pressed: their id, and whether they moderate here (Manage Messages)."""

    user_id: int
    moderator: bool = False

    def may_manage(self, owner_id: int) -> bool:
        """The requester, or a moderator."""
        return self.user_id == owner_id or self.moderator


def parse_stars(text: str) -> int | None:
    """`"4"` → 4; anything but a whole number 1–5 → None. (`isdecimal`, not `isdigit`:
    "²" is a digit that `int` refuses.)"""
    text = text.strip().rstrip("⭐").strip()
    return int(text) if text.isdecimal() and 1 <= int(text) <= 5 else None


def stop(app: Muse, generation_id: int, actor: Actor) -> str:
    """⏹: abort a generation that is still streaming."""
    run = app.active.get(generation_id)
    if run is None:
        return "That text has already finished."
    if not actor.may_manage(run.user_id):
        return NOT_YOURS.format(what="stop")
    app.engine.abort(run.request_id)
    return "⏹ Stopping."


async def rate(
    app: Muse,
    generation_id: int,
    user_id: int,
    *,
    thumbs: str | None = None,
    stars: int | None = None,
    comment: str | None = None,
) -> str:
    """👍 / 👎 / ⭐ (with an optional comment): one rating per user, changeable."""
    try:
        if stars is not None:
            await app.store.record_feedback(generation_id, user_id, stars=stars, comment=comment)
        else:
            up = "up" if thumbs == "up" else "down"
            await app.store.record_feedback(generation_id, user_id, thumbs=up)
    except GenerationGone:
        return GONE
    return thanks_rating(thumbs, stars)


async def vote(
    app: Muse,
    generation_a: int,
    generation_b: int,
    user_id: int,
    winner: str,
    *,
    final: bool = False,
) -> str:
    """A / B / tie on a comparison: one vote per user per pair, changeable unless `final` (the
    arena, whose answer reveals the models: a vote made knowing them would not be blind)."""
    first = await app.store.get_generation(generation_a)
    prompt = scenes.main_prompt(app.presets, first) if first else ""
    choice = "tie" if winner == "tie" else "A" if winner == "A" else "B"
    try:
        standing = await app.store.record_comparison(
            prompt, generation_a, generation_b, user_id, choice, final=final
        )
    except GenerationGone:
        return COMPARISON_GONE
    if standing is not None:
        return FINAL_VOTE.format(choice="a tie" if standing == "tie" else standing)
    return thanks_vote(choice)


async def live(app: Muse, generation_id: int) -> Generation | None:
    """The generation if it can still be used (not deleted or forgotten)."""
    generation = await app.store.get_generation(generation_id)
    if generation is None or generation.status == "deleted":
        return None
    return generation


async def may_delete(
    app: Muse, generation_id: int, actor: Actor
) -> tuple[Generation | None, str | None]:
    """🗑's check: (the generation or None when its row is gone, None) when `actor` may delete
    the reply, else (None, why not)."""
    generation = await app.store.get_generation(generation_id)
    if generation is not None and not actor.may_manage(generation.user_id):
        return None, NOT_YOURS.format(what="delete")
    return generation, None
