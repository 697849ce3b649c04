"""Who streams each `running` generation: its `owner`, the instance of the store that recorded it.

Several processes (shards) share one database. Each open store is an instance with a row in
`instances` and a heartbeat (`HEARTBEAT_S`); a generation it records is owned by it. A store
opened to serve (`mark_interrupted`) marks `interrupted` only the running rows whose owner is
gone: its heartbeat expired, its process is provably dead on this machine, or it closed. The
Discord front end asks again every few seconds (`reclaim_orphans`), so a process that died
while others live has its replies fixed by whichever one notices first; a process that restarts
after a crash finds its own old rows the same way (it cannot know its previous instance id).

Writes are functions for the single writer; the mixin's methods run them. SQL is portable:
integers for times, `RETURNING`, `NOT EXISTS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

from storage.errors import StoreClosed
from storage.instances import EXPIRES_S, HEARTBEAT_S, Instance, is_gone_here, this_instance

log = logging.getLogger("muse.storage.owners")


def wall_ms() -> int:
    """Now, in milliseconds since 1970: heartbeats compare across processes and machines, so a
    wall clock (a monotonic clock means nothing outside its machine)."""
    return int(time.time() * 1000)


# --- writes (in the writer's transaction) ------------------------------------------------------


def join(conn: sqlite3.Connection, me: Instance, now_ms: int, reclaim_at: str | None) -> list[int]:
    """Add this instance; with `reclaim_at` (a serving store's open), also mark the running
    generations of gone instances interrupted at that time and return their ids."""
    conn.execute(
        """INSERT INTO instances (id, machine, pid, pid_start, started_ms, beat_ms)
           VALUES (?, ?, ?, ?, ?, ?)""",
        (me.id, me.machine, me.pid, me.pid_start, now_ms, now_ms),
    )
    return [] if reclaim_at is None else reclaim(conn, me, now_ms, reclaim_at)


def beat(conn: sqlite3.Connection, me: Instance, now_ms: int) -> bool:
    """The heartbeat; False when another process had taken this one for gone (its row was
    removed, its running generations marked): the row is written again."""
    cursor = conn.execute("UPDATE instances SET beat_ms = ? WHERE id = ?", (now_ms, me.id))
    if cursor.rowcount:
        return True
    conn.execute(
        """INSERT INTO instances (id, machine, pid, pid_start, started_ms, beat_ms)
           VALUES (?, ?, ?, ?, ?, ?)""",
        (me.id, me.machine, me.pid, me.pid_start, now_ms, now_ms),
    )
    return False


def reclaim(conn: sqlite3.Connection, me: Instance, now_ms: int, now_utc: str) -> list[int]:
    """Remove the instances that are gone (never `me`), then mark every running generation
    without a live owner `interrupted` and free their slots; the ids marked, ascending."""
    beat(conn, me, now_ms)  # a stalled `me` must not find its own rows ownerless
    expired = now_ms - int(EXPIRES_S * 1000)
    others = conn.execute(
        "SELECT id, machine, pid, pid_start, beat_ms FROM instances WHERE id <> ?", (me.id,)
    ).fetchall()
    for instance_id, machine, pid, pid_start, beat_ms in others:
        if beat_ms < expired or is_gone_here(machine, pid, pid_start, me.machine):
            log.info("instance %s (pid %s) is gone", instance_id, pid)
            conn.execute("DELETE FROM instances WHERE id = ?", (instance_id,))
    cursor = conn.execute(
        """UPDATE generations SET status = 'interrupted', finished_utc = ?
           WHERE status = 'running' AND (owner IS NULL OR NOT EXISTS
               (SELECT 1 FROM instances WHERE instances.id = generations.owner))
           RETURNING id""",
        (now_utc,),
    )
    marked = sorted(row[0] for row in cursor.fetchall())
    free_orphan_slots(conn)
    return marked


def leave(conn: sqlite3.Connection, instance_id: str) -> None:
    """A store closes: its row and its slots go. Its running generations (a shutdown cut them
    off) become orphans that the next serving store marks."""
    conn.execute("DELETE FROM instances WHERE id = ?", (instance_id,))
    free_orphan_slots(conn)


def free_orphan_slots(conn: sqlite3.Connection) -> None:
    """Drop the running slots of instances that are gone, and recount the guilds' slots."""
    cursor = conn.execute(
        """DELETE FROM slots WHERE NOT EXISTS
               (SELECT 1 FROM instances WHERE instances.id = slots.owner)"""
    )
    if cursor.rowcount:
        conn.execute(
            """UPDATE guild_slots SET running =
                   (SELECT COUNT(*) FROM slots WHERE slots.guild_id = guild_slots.guild_id)"""
        )


# --- the store's side ----------------------------------------------------------------------


class Owners:
    """The `Store`'s instance: joining at open, the heartbeat, orphans, leaving at close (the
    store supplies `_write` and `_now`)."""

    _write: Callable[..., Awaitable[Any]]
    _now: Callable[[], str]
    instance: Instance
    _heartbeat: asyncio.Task[None] | None

    async def _join(self, mark_interrupted: bool) -> tuple[int, ...]:
        """Become an instance and start the heartbeat; when serving, mark the generations of
        gone instances interrupted (returned, oldest first)."""
        self.instance = await asyncio.to_thread(this_instance)
        reclaim_at = self._now() if mark_interrupted else None
        marked = await self._write(join, self.instance, wall_ms(), reclaim_at)
        me = self.instance
        log.info("instance %s (pid %d) owns the generations it streams", me.id, me.pid)
        if marked:
            log.warning("%d generations left running by a gone process: interrupted", len(marked))
        self._heartbeat = asyncio.create_task(self._beat(), name="muse-storage-heartbeat")
        return tuple(marked)

    async def reclaim_orphans(self) -> tuple[int, ...]:
        """Mark `interrupted` the running generations whose owner is gone (expired heartbeat,
        dead process, closed store); their ids, oldest first. Whoever calls this must edit
        their replies: the serving front end."""
        marked = await self._write(reclaim, self.instance, wall_ms(), self._now())
        if marked:
            log.warning("%d generations of a gone process: interrupted", len(marked))
        return tuple(marked)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                if not await self._write(beat, self.instance, wall_ms()):
                    log.warning("instance %s was taken for gone; beating again", self.instance.id)
            except StoreClosed:
                return
            except Exception as exc:  # noqa: BLE001 - a failed beat is retried at the next one
                log.warning("heartbeat of instance %s failed: %s", self.instance.id, exc)

    async def _leave(self) -> None:
        """Stop the heartbeat and remove this instance (its slots with it)."""
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            # RuntimeError: the task's event loop is closed already, so nothing runs it
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                task.cancel()
                await task
        try:
            await self._write(leave, self.instance.id)
        except Exception as exc:  # noqa: BLE001 - closing goes on; the heartbeat will expire
            log.warning("could not remove instance %s: %s", self.instance.id, exc)
