"""The application every front end shares: settings, store, engine, presets and the state of
the generations in flight (running slots, ⏹ targets, shutting down)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bot.core.limits import Limits
from bot.core.settings import Settings
from generation.backend import Backend
from generation.tasks.presets import Preset, kind_of
from storage.store import Store

EDIT_INTERVAL_S = 1.2  # progress edits of a reply: at most one per interval


@dataclass(slots=True)
class ActiveRun:
    """A generation being streamed (⏹ needs its request id and requester)."""

    request_id: str
    user_id: int
    interrupted: bool = False  # cut off by a shutdown: stored `interrupted`, reply says so


class LoopHooks(Protocol):
    """What the rest of the application tells the learning loop (`bot.core.loop`)."""

    async def models_retired(self, names: Sequence[str], reason: str) -> None:
        """These models stopped serving (e.g. `/forget`): put back the defaults they held."""
        ...


@dataclass(slots=True)
class Muse:
    """One Muse: what a command needs, whichever front end it came from."""

    settings: Settings
    store: Store
    engine: Backend
    presets: dict[str, Preset]
    limits: Limits = field(init=False)
    active: dict[int, ActiveRun] = field(default_factory=dict)
    stopping: bool = False  # set by `bot.core.shutdown.drain`: new generations are refused
    edit_interval_s: float = EDIT_INTERVAL_S
    loop: LoopHooks | None = None  # the learning loop, where the front end runs one

    def __post_init__(self) -> None:
        self.limits = Limits(guild_concurrency=self.settings.guild_concurrency)

    def kind_of(self, task: str) -> str:
        """The kind of `task` in the loaded presets (`generation.tasks.presets.KINDS`): what a
        reply shows and which buttons it carries; text for a task the presets no longer have."""
        return kind_of(self.presets, task)

    @property
    def model_name(self) -> str:
        """What a generation's row records as its model."""
        return self.engine.model_id or self.settings.model or "default"
