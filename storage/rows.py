"""The stored rows as plain values (generations, conversations, personas, models, guild settings,
loops), and the rule that turns ratings into verdicts."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Literal

Thumbs = Literal["up", "down"]
Winner = Literal["A", "B", "tie"]
Status = Literal["running", "done", "failed", "cancelled", "interrupted", "deleted"]
Source = Literal["model", "edit"]
FINISHED_STATUSES = frozenset({"done", "failed", "cancelled", "interrupted"})
ROLES = frozenset({"system", "user", "assistant"})

GOOD, NEUTRAL, BAD = 1, 0, -1
VERDICT_NAMES = {GOOD: "good", NEUTRAL: "neutral", BAD: "bad"}


def verdict_of(thumbs: Thumbs | None, stars: int | None) -> int:
    """The verdict of ONE rating action: 👍 or ⭐4–5 good, 👎 or ⭐1–2 bad, ⭐3 neutral."""
    if (thumbs is None) == (stars is None):
        raise ValueError("a rating action is either thumbs or stars")
    if thumbs is not None:
        if thumbs not in ("up", "down"):
            raise ValueError(f"thumbs must be 'up' or 'down', not {thumbs!r}")
        return GOOD if thumbs == "up" else BAD
    if not isinstance(stars, int) or isinstance(stars, bool) or not 1 <= stars <= 5:
        raise ValueError(f"stars must be an integer from 1 to 5, not {stars!r}")
    return GOOD if stars >= 4 else BAD if stars <= 2 else NEUTRAL


def parse_utc(text: str | None) -> datetime | None:
    """The inverse of `db.format_utc`."""
    return None if text is None else datetime.fromisoformat(text)


@dataclass(frozen=True, slots=True)
class Generation:
    """One row of `generations`, JSON columns decoded."""

    id: int
    parent_id: int | None
    root_id: int
    conversation_id: int | None
    user_id: int
    guild_id: int | None
    channel_id: int | None
    message_id: int | None
    task: str
    fields: dict[str, Any]
    messages: list[dict[str, str]]
    params: dict[str, Any]
    model_id: str
    model_revision: str | None
    output: str | None
    finish_reason: str | None
    tokens_in: int | None
    tokens_out: int | None
    ttft_ms: float | None
    total_ms: float | None
    status: Status
    error: str | None
    created_utc: datetime
    finished_utc: datetime | None
    deleted_utc: datetime | None
    followup_message_ids: tuple[int, ...] = ()  # where a reply over 2,000 characters goes on
    source: Source = "model"  # "edit": a member's corrected text of its parent (✏️)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Generation:
        """From a `SELECT *` row; columns added by later migrations are ignored."""
        values = dict(row)
        for name in ("fields", "messages", "params"):
            values[name] = json.loads(values.pop(f"{name}_json"))
        values["followup_message_ids"] = tuple(
            json.loads(values.pop("followup_message_ids_json", "[]"))
        )
        values.setdefault("source", "model")
        for name in ("created_utc", "finished_utc", "deleted_utc"):
            values[name] = parse_utc(values[name])
        return cls(**{name: values[name] for name in _GENERATION_FIELDS})


_GENERATION_FIELDS = tuple(f.name for f in fields(Generation))


@dataclass(frozen=True, slots=True)
class Conversation:
    """A `/chat` conversation, bound to one Discord thread."""

    id: int
    thread_id: int
    user_id: int
    guild_id: int | None
    channel_id: int | None
    created_utc: datetime

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Conversation:
        return cls(
            id=row["id"],
            thread_id=row["thread_id"],
            user_id=row["user_id"],
            guild_id=row["guild_id"],
            channel_id=row["channel_id"],
            created_utc=parse_utc(row["created_utc"]),
        )


@dataclass(frozen=True, slots=True)
class Persona:
    """The persona a channel's replies speak as: a name and the prompt that sets it up."""

    channel_id: int
    guild_id: int
    name: str
    prompt: str
    updated_utc: datetime

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Persona:
        return cls(
            channel_id=row["channel_id"],
            guild_id=row["guild_id"],
            name=row["name"],
            prompt=row["prompt"],
            updated_utc=parse_utc(row["updated_utc"]),
        )


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """One entry of the models registry: a fine-tuned adapter on a base model.

    `created_utc` None (when registering) means "now". `data` says what it was trained on,
    `metrics` how it scored; both are JSON objects. A retired model stays in the registry (its
    generations still name it) but is no longer offered. `owner_guild_id`: the guild whose data
    trained it, which alone sees it (None: a host-wide model, offered to every guild);
    `contributors`: the export pseudonyms of the members whose rows trained it.
    """

    name: str
    base_model: str
    adapter_path: str
    method: str
    created_utc: datetime | None = None
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    retired: bool = False
    owner_guild_id: int | None = None
    contributors: tuple[str, ...] = ()
    retired_reason: str | None = None

    def visible_to(self, guild_id: int | None) -> bool:
        """Whether a guild may see and use the model: a host-wide one, or its own."""
        return self.owner_guild_id is None or self.owner_guild_id == guild_id

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ModelRecord:
        return cls(
            name=row["name"],
            base_model=row["base_model"],
            adapter_path=row["adapter_path"],
            method=row["method"],
            created_utc=parse_utc(row["created_utc"]),
            data=json.loads(row["data_json"]),
            metrics=json.loads(row["metrics_json"]),
            retired=row["retired_utc"] is not None,
            owner_guild_id=row["owner_guild_id"],
            contributors=tuple(json.loads(row["contributors_json"])),
            retired_reason=row["retired_reason"],
        )


@dataclass(frozen=True, slots=True)
class ArenaVote:
    """One arena vote: a comparison of two generations by different models.

    `is_self`: the voter requested one of the two generations; `voter`: their user id.
    """

    model_a: str
    model_b: str
    winner: Winner
    is_self: bool
    voter: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class FeedbackOutcome:
    """What a rating action did: the rater's verdict now, the generation's score now."""

    verdict: Literal["good", "neutral", "bad"]
    score: int
    is_self: bool


@dataclass(frozen=True, slots=True)
class GuildSettings:
    """A guild's `/settings`; None (or empty) means "use the bot's default"."""

    temperature: float | None = None
    max_tokens: int | None = None
    per_user_per_minute: int | None = None
    enabled_tasks: tuple[str, ...] | None = None
    channels: tuple[int, ...] = ()
    blocklist: tuple[str, ...] = ()
    default_model: str | None = None  # a name in the models registry; None: the bot's model

    @classmethod
    def from_json(cls, text: str) -> GuildSettings:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**_settings_values({k: v for k, v in data.items() if k in known}))

    def to_json(self) -> str:
        """Only what differs from the defaults is stored."""
        default = GuildSettings()
        data = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }
        return json.dumps(data, sort_keys=True)

    def updated(self, changes: Mapping[str, Any]) -> GuildSettings:
        """A copy with `changes` applied; a None value resets that setting to its default."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown guild settings: {', '.join(sorted(unknown))}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        default = GuildSettings()
        for name, value in changes.items():
            values[name] = getattr(default, name) if value is None else value
        return GuildSettings(**_settings_values(values))


def _settings_values(values: dict[str, Any]) -> dict[str, Any]:
    """Validate and normalise settings values (lists become tuples)."""
    out = dict(values)
    if out.get("temperature") is not None:
        out["temperature"] = float(out["temperature"])
        if not 0.0 <= out["temperature"] <= 2.0:
            raise ValueError("temperature must be between 0.0 and 2.0")
    for name in ("max_tokens", "per_user_per_minute"):
        value = out.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError(f"{name} must be an integer")
        if value is not None and value < 0:
            raise ValueError(f"{name} must not be negative")
    if out.get("enabled_tasks") is not None:
        out["enabled_tasks"] = tuple(str(task) for task in out["enabled_tasks"])
    if "channels" in out:
        out["channels"] = tuple(int(channel) for channel in out["channels"])
    if "blocklist" in out:
        out["blocklist"] = tuple(str(word) for word in out["blocklist"])
    model = out.get("default_model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ValueError("default_model must be a model name (or None for the bot's model)")
    return out


LOOP_STATES = ("collecting", "training", "checking", "arena")
LOOP_EVENTS = ("tuned", "arena", "promoted", "retired", "rolled_back")


@dataclass(frozen=True, slots=True)
class LoopState:
    """A guild's learning loop: its settings (None: the host's default) and where it stands.

    `state`: collecting (waiting for enough new training rows), training (a tune runs),
    checking (the new adapter is being checked), arena (`challenger` battles the default).
    `rows_at_last_tune`: the guild's training rows when the last tune started, so the rows
    "since the last tune" are the difference. `progress`: a running tune's last report.
    """

    guild_id: int
    enabled: bool = False
    channel_id: int | None = None
    min_examples: int | None = None
    min_votes: int | None = None
    confidence: float | None = None
    state: str = "collecting"
    challenger: str | None = None
    previous_default: str | None = None
    rows_at_last_tune: int = 0
    arena_since_utc: datetime | None = None
    progress: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> LoopState:
        since = row["arena_since_utc"]
        return cls(
            guild_id=row["guild_id"],
            enabled=bool(row["enabled"]),
            channel_id=row["channel_id"],
            min_examples=row["min_examples"],
            min_votes=row["min_votes"],
            confidence=row["confidence"],
            state=row["state"],
            challenger=row["challenger"],
            previous_default=row["previous_default"],
            rows_at_last_tune=row["rows_at_last_tune"],
            arena_since_utc=None if since is None else parse_utc(since),
            progress=json.loads(row["progress_json"]),
        )


@dataclass(frozen=True, slots=True)
class LoopEvent:
    """One turn of a guild's loop: `event` in LOOP_EVENTS, the model, why, and the figures."""

    guild_id: int
    event: str
    model: str | None
    reason: str
    figures: dict[str, Any]
    created_utc: datetime

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> LoopEvent:
        return cls(
            guild_id=row["guild_id"],
            event=row["event"],
            model=row["model"],
            reason=row["reason"],
            figures=json.loads(row["figures_json"]),
            created_utc=parse_utc(row["created_utc"]),
        )
