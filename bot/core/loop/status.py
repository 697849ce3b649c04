"""What `/loop status`, the console and `muse loop status --json` show of a guild's loop: its
state and thresholds, the training rows since the last tune and how many are needed, a running
tune's progress, the default and the challenger with their arena record, and the history."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass, replace
from typing import Any

from bot.core.loop.odds import Standing, standing
from bot.core.model_choice import ALL_GUILDS, BASE
from bot.core.settings import Settings
from generation.tuning.data import examples
from generation.tuning.rules import Rules, screen
from storage.db import format_utc
from storage.export import ExportFilters
from storage.rows import ArenaVote, LoopEvent, LoopState
from storage.store import Store

HISTORY = 10


@dataclass(frozen=True, slots=True)
class Thresholds:
    """A guild's loop settings, its own where set, else the host's."""

    min_examples: int
    min_votes: int
    confidence: float


def thresholds(loop: LoopState, settings: Settings) -> Thresholds:
    return Thresholds(
        loop.min_examples or settings.loop_min_examples,
        loop.min_votes or settings.loop_min_votes,
        loop.confidence or settings.loop_confidence,
    )


async def training_rows(store: Store, guild_id: int) -> int:
    """The guild's texts a tune could learn from now, after the training data rules: rated
    (self-ratings aside) or edited, one row each (the KTO export, one row per text with a
    verdict), less what the rules drop (`generation.tuning.rules`)."""
    sink = io.StringIO()
    await store.export("kto", sink, ExportFilters(guild_id=guild_id, include_self=False))
    return await asyncio.to_thread(_kept, sink.getvalue())


def _kept(jsonl: str) -> int:
    rows = [json.loads(line) for line in jsonl.splitlines() if line.strip()]
    return len(screen(examples("kto", rows), Rules()).examples)


async def default_name(store: Store, guild_id: int) -> str:
    """The guild's default model's name as its settings hold it (`base`: the base model)."""
    name = (await store.get_guild_settings(guild_id)).default_model
    if name is None:
        name = (await store.get_guild_settings(ALL_GUILDS)).default_model
    return name or BASE


async def arena_standing(store: Store, guild_id: int, challenger: str, default: str) -> Standing:
    """The challenger against the default in this guild's final arena votes; the base model
    is whatever unregistered model id the votes name."""
    registered = {m.name for m in await store.list_models(include_retired=True)}
    votes = [_named(vote, registered) for vote in await store.arena_votes(guild_id=guild_id)]
    return standing(votes, challenger, default)


def _named(vote: ArenaVote, registered: set[str]) -> ArenaVote:
    a = vote.model_a if vote.model_a in registered else BASE
    b = vote.model_b if vote.model_b in registered else BASE
    return replace(vote, model_a=a, model_b=b)


@dataclass(frozen=True, slots=True)
class LoopStatus:
    loop: LoopState
    limits: Thresholds
    rows: int
    default: str
    standing: Standing | None
    history: list[LoopEvent]

    @property
    def rows_since_tune(self) -> int:
        return max(0, self.rows - self.loop.rows_at_last_tune)

    def to_json(self) -> dict[str, Any]:
        """The contract's `muse loop status --json` object for one guild."""
        s = self.standing
        return {
            "guild": self.loop.guild_id,
            "enabled": self.loop.enabled,
            "state": self.loop.state,
            "default": self.default,
            "challenger": self.loop.challenger,
            "rows_since_tune": self.rows_since_tune,
            "min_examples": self.limits.min_examples,
            "min_votes": self.limits.min_votes,
            "confidence": self.limits.confidence,
            "votes": s.votes if s else 0,
            "voters": s.voters if s else 0,
            "p_better": s.p_better if s else None,
            "progress": self.loop.progress,
            "history": [
                {
                    "event": e.event,
                    "model": e.model,
                    "reason": e.reason,
                    "utc": format_utc(e.created_utc),
                }
                for e in self.history
            ],  # fmt: skip
        }

    def render(self) -> str:
        """The status as a Discord / terminal message."""
        loop, limits = self.loop, self.limits
        onoff = (
            "on" if loop.enabled else "off (a manager turns it on with `/loop set enabled:true`)"
        )
        where = f" · announcements in <#{loop.channel_id}>" if loop.channel_id else ""
        lines = [f"**Learning loop**: {onoff}{where}", f"State: **{loop.state}**"]
        lines.append(
            f"Training rows since the last tune: {self.rows_since_tune} of {limits.min_examples} "
            "needed (rated or edited texts)"
        )
        progress = loop.progress
        if loop.state == "training" and progress.get("total"):
            lines.append(f"Tuning: step {progress['step']}/{progress['total']}")
        elif progress.get("error"):
            lines.append(f"Last tune: ⚠️ {progress['error']}")
        lines.append(f"Default: **{self.default}**")
        if loop.challenger:
            lines.append(f"Challenger: **{loop.challenger}**")
        s = self.standing
        if s is not None and s.votes:
            lines.append(
                f"Arena: {s.votes} final votes from {s.voters} members (needs {limits.min_votes} "
                f"from 3); challenger won {s.win_rate:.0%}; P(challenger is better) = "
                f"{s.p_better:.2f} (decides at {limits.confidence:.2f})"
            )
        elif loop.challenger:
            lines.append("Arena: no votes yet — try `/arena`")
        if self.history:
            lines.append("History:")
            for e in self.history[:5]:
                lines.append(
                    f"• {format_utc(e.created_utc)[:16]} {e.event} {e.model or ''} — {e.reason}"
                )
        return "\n".join(lines)


async def loop_status(store: Store, settings: Settings, guild_id: int) -> LoopStatus:
    loop = await store.get_loop(guild_id)
    default = await default_name(store, guild_id)
    record = None
    if loop.challenger:
        record = await arena_standing(store, guild_id, loop.challenger, default)
    return LoopStatus(
        loop=loop,
        limits=thresholds(loop, settings),
        rows=await training_rows(store, guild_id),
        default=default,
        standing=record,
        history=await store.loop_history(guild_id, HISTORY),
    )
