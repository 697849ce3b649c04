"""`MUSE_SHARDS` / `MUSE_SHARD_IDS`: which Discord shards this process runs.

    MUSE_SHARDS=          one process, no sharding (a plain `commands.Bot`)
    MUSE_SHARDS=auto      one process, as many shards as Discord recommends (`AutoShardedBot`)
    MUSE_SHARDS=4         one process running shards 0-3
    MUSE_SHARDS=4 MUSE_SHARD_IDS=0,1   this process runs shards 0 and 1 of 4; another runs 2,3

Several processes share one SQLite file (WAL) on one machine and, to share one model and its
batching, one model server: a split is refused with the local backend, where each process would
load its own copy of the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.settings import Settings, SettingsError


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """`count` None: Discord's recommended count; `ids` None: every shard of `count`."""

    count: int | None
    ids: tuple[int, ...] | None = None

    @property
    def is_partial(self) -> bool:
        """Whether other processes must run the shards this one does not."""
        return self.ids is not None and self.count is not None and len(self.ids) < self.count

    def describe(self) -> str:
        if self.count is None:
            return "sharded: as many shards as Discord recommends, all in this process"
        if self.ids is None or not self.is_partial:
            return f"sharded: all {self.count} shards in this process"
        listed = ",".join(str(i) for i in self.ids)
        return f"sharded: shards {listed} of {self.count} in this process"


def plan_shards(settings: Settings) -> ShardPlan | None:
    """The shards to run (None: not sharded); raises `SettingsError` naming the bad setting."""
    raw = settings.shards.strip().lower()
    ids = settings.shard_ids
    if not raw:
        if ids:
            raise SettingsError(
                "MUSE_SHARD_IDS needs MUSE_SHARDS=N, the total number of shards across all "
                "processes (e.g. MUSE_SHARDS=4 MUSE_SHARD_IDS=0,1)."
            )
        return None
    if raw == "auto":
        if ids:
            raise SettingsError(
                "MUSE_SHARD_IDS needs a fixed MUSE_SHARDS=N, not auto: every process must agree "
                "on the total number of shards."
            )
        return ShardPlan(count=None)
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if count < 1:
        raise SettingsError(
            f"MUSE_SHARDS={settings.shards!r} must be auto or a positive whole number of shards."
        )
    if not ids:
        return ShardPlan(count=count)
    if len(set(ids)) != len(ids):
        raise SettingsError(f"MUSE_SHARD_IDS lists a shard twice: {_listed(ids)}.")
    outside = [i for i in ids if not 0 <= i < count]
    if outside:
        raise SettingsError(
            f"MUSE_SHARD_IDS={_listed(ids)} names shard {_listed(outside)}, but MUSE_SHARDS="
            f"{count} has shards 0 to {count - 1}."
        )
    plan = ShardPlan(count=count, ids=tuple(sorted(ids)))
    if plan.is_partial and settings.backend == "local":
        raise SettingsError(
            f"MUSE_SHARD_IDS={_listed(ids)} runs {len(ids)} of {count} shards, so other processes "
            "must run the rest; with MUSE_BACKEND=local each process would load its own copy of "
            "the model and batch alone. Run several processes with MUSE_BACKEND=openai (one "
            "model server shared by all), or run every shard in one process (unset "
            "MUSE_SHARD_IDS)."
        )
    return plan


def _listed(ids: tuple[int, ...] | list[int]) -> str:
    return ",".join(str(i) for i in ids)
