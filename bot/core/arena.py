"""/arena: the same prompt written by two different models — the guild's default and a
challenger — shown blind as A and B (sides drawn at random); the vote is a comparison whose two
generations carry their model names, and the leaderboard is fitted over such votes."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace

from bot.core.app import Muse
from bot.core.model_choice import BASE, default_model, served, visible
from bot.core.plans import Plan
from storage.arena import leaderboard_votes
from storage.leaderboard import Leaderboard, build_leaderboard
from storage.rows import Generation, GuildSettings

NEED_TWO = (
    "🏟️ The arena needs two models, and this server has only {served}. Train one on this "
    "server's ratings and edits: turn on the learning loop with `/loop set enabled:true`, or "
    "run `muse tune --name NAME --guild ID` on the host; then try again."
)


@dataclass(frozen=True, slots=True)
class Bout:
    """Who writes A and who writes B (None: the base model)."""

    model_a: str | None
    model_b: str | None


async def contenders(
    app: Muse, settings: GuildSettings, guild_id: int | None, challenger: str | None = None
) -> tuple[str | None, str | None] | str:
    """(the guild's default, a challenger), or the refusal to show. The challenger is the one
    asked for (it must be served and the guild's to see), else the guild's loop challenger,
    else the newest model the guild may see that is not the default, else the base."""
    default = await default_model(app, settings, guild_id)
    if challenger is None and guild_id is not None:
        challenger = (await app.store.get_loop(guild_id)).challenger
    if challenger is not None:
        name = None if challenger == BASE else await served(app, challenger, guild_id)
        if name == default or (name is None and challenger != BASE):
            return f"⚠️ `{challenger[:80]}` is not a served model other than the default."
        return default, name
    for record in await visible(app, guild_id):  # newest first
        if record.name != default and await served(app, record.name, guild_id) == record.name:
            return default, record.name
    if default is not None:
        return default, None  # an adapter against the base it was tuned from
    return NEED_TWO.format(served=BASE)


def draw_sides(default: str | None, challenger: str | None) -> Bout:
    """A and B at random, so position never favours a model."""
    if secrets.randbelow(2):
        return Bout(default, challenger)
    return Bout(challenger, default)


def bout_plans(first: Plan, bout: Bout) -> tuple[Plan, Plan]:
    """The same prompt, task and seed for both sides; only the model differs."""
    a = replace(first, request=replace(first.request, model=bout.model_a))
    b = replace(
        first,
        request=replace(
            first.request, model=bout.model_b, request_id=first.request.request_id + "b"
        ),
    )
    return a, b


def reveal(base_id: str, generation_a: Generation | None, generation_b: Generation | None) -> str:
    """Which model wrote A and B, after a vote."""

    def name(generation: Generation | None) -> str:
        if generation is None:
            return "a deleted text"
        return BASE if generation.model_id == base_id else generation.model_id

    return f"A was written by **{name(generation_a)}**, B by **{name(generation_b)}**."


async def leaderboard(
    app: Muse, guild_id: int | None = None, task: str | None = None
) -> Leaderboard:
    """The Bradley–Terry table over the arena votes (seeded: the same votes, the same table),
    of the models the guild may see."""
    votes = await app.store.arena_votes(guild_id=guild_id, task=task)
    models = await app.store.list_models(include_retired=True)
    hidden = {m.name for m in models if not m.visible_to(guild_id)}
    shown = [v for v in votes if v.model_a not in hidden and v.model_b not in hidden]
    return build_leaderboard(leaderboard_votes(shown))
