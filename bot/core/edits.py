"""✏️ Improve: a member's corrected text, stored as an edit of the original (a new generation,
source `edit`, the original as its parent, the editor as its user): the most direct training
signal a community can give, so it passes the same admission as a generation (the task and
channel rules, the blocklist, the rate limit: `policy.admit`) before anything is stored."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bot.core import actions
from bot.core.app import Muse
from bot.core.limits import Limited
from bot.core.policy import Refused, Where, admit, check_rules, guild_settings
from bot.core.texts import DELETED
from storage.errors import GenerationGone
from storage.rows import Generation

EDIT_LIMIT = 4000  # a Discord modal's paragraph field holds at most this many characters
TOO_LONG = (
    "✏️ This text is {length:,} characters long, more than the {limit:,} an edit box holds. "
    "Improve a shorter text, or export it (`/export format:raw`) and edit it there."
)
UNFINISHED = "✏️ Only a finished text can be improved."
EMPTY = "Nothing was saved: the improved text was empty."
UNCHANGED = "Nothing was saved: the text is unchanged."
NOT_SAVED = "{why}\nNothing was saved."


@dataclass(frozen=True, slots=True)
class Improved:
    """A saved edit: its generation id and text, and the original it corrects."""

    generation_id: int
    text: str
    original: Generation


async def editable(app: Muse, generation_id: int) -> tuple[Generation | None, str | None]:
    """(the generation, None) when it can be improved, else (None, why not)."""
    generation = await actions.live(app, generation_id)
    if generation is None:
        return None, DELETED
    text = generation.output or ""
    if generation.status != "done" or not text.strip():
        return None, UNFINISHED
    if len(text) > EDIT_LIMIT:
        return None, TOO_LONG.format(length=len(text), limit=EDIT_LIMIT)
    return generation, None


async def may_edit(app: Muse, original: Generation, where: Where) -> str | None:
    """Why `where.user_id` may not edit here now (task or channel off, the rate limit used up),
    or None; checked when ✏️ is pressed, so no one types a text that cannot be saved. Takes
    nothing: `improve` admits the edit itself."""
    settings = await guild_settings(app, where.guild_id)
    try:
        check_rules(settings, original.task, where, (), "text")
    except Refused as exc:
        return str(exc)
    per_minute = settings.per_user_per_minute
    wait = app.limits.retry_after(
        where.user_id, app.settings.user_per_minute if per_minute is None else per_minute
    )
    if wait is None:
        return None
    seconds = max(1, math.ceil(wait))
    return f"⏳ You have used this minute's texts and edits — try again in {seconds} s."


async def improve(
    app: Muse, generation_id: int, text: str, where: Where
) -> tuple[Improved | None, str | None]:
    """Store `text` as `where.user_id`'s edit of the generation: (the edit, None), or (None,
    why nothing changed: empty, unchanged, too long, refused by the guild's rules or the rate
    limit, or the original is gone). An edit counts as a start toward the rate limit."""
    text = text.strip()
    original, problem = await editable(app, generation_id)
    if original is None:
        return None, problem
    if not text:
        return None, EMPTY
    if text == (original.output or "").strip():
        return None, UNCHANGED
    if len(text) > EDIT_LIMIT:
        return None, TOO_LONG.format(length=len(text), limit=EDIT_LIMIT)
    try:
        admission = await admit(app, original.task, where, [text], "text")
    except (Refused, Limited) as exc:
        return None, NOT_SAVED.format(why=exc)
    try:
        edit_id = await app.store.record_edit(
            original.id,
            where.user_id,
            text,
            guild_id=where.guild_id,
            channel_id=where.channel_id,
        )
    except GenerationGone:
        return None, DELETED
    finally:
        admission.slot.release()  # an edit runs nothing: only its start counts
    return Improved(edit_id, text, original), None
