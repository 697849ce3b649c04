"""Running generations belong to the instance that records them (`storage.owners`), and the
limits every process shares (`storage.slots`). Another process is a real one: `store_child`."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import owners
from storage.instances import EXPIRES_S
from storage.slots import SlotRefused
from storage.store import Store
from tests.storage.test_store_durability import Writer

STORY = {"user_id": 1, "task": "story", "messages": [], "params": {}, "model_id": "m"}


@contextlib.contextmanager
def other_process(path: Path) -> Iterator[Writer]:
    """A second process with a store open on the file (killed at the end)."""
    child = Writer(path)
    try:
        yield child
    finally:
        child.kill()


def execute(path: Path, sql: str, *args: object) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(sql, args).fetchall()


async def status(store: Store, generation_id: int) -> str:
    return (await store.get_generation(generation_id)).status


async def test_a_serving_open_leaves_a_live_process_alone_and_reclaims_it_once_killed(
    db_path: Path,
) -> None:
    with other_process(db_path) as other:
        theirs = other.call("record_generation", **STORY)["ok"]
        async with Store.open(db_path) as store:
            assert store.interrupted == ()  # before ownership, every running row was marked
            mine = await store.record_generation(**STORY)
            assert await store.reclaim_orphans() == ()
            assert await status(store, theirs) == "running"
            other.kill()  # on this machine a dead pid is known at once, before its heartbeat ages
            assert await store.reclaim_orphans() == (theirs,)
            assert await status(store, theirs) == "interrupted"
            assert await status(store, mine) == "running"
            assert await store.reclaim_orphans() == ()  # marked once: its replies edited once


async def test_an_expired_heartbeat_gives_up_the_rows_wherever_the_process_ran(
    db_path: Path,
) -> None:
    async with Store.open(db_path) as store:
        theirs = await store.record_generation(**STORY)
        now = owners.wall_ms()
        execute(
            db_path,
            """INSERT INTO instances (id, machine, pid, pid_start, started_ms, beat_ms)
               VALUES ('far', 'another-host/boot/pid:[1]', 1, 1, ?, ?)""",
            now,
            now,
        )
        execute(db_path, "UPDATE generations SET owner = 'far' WHERE id = ?", theirs)
        await store.take_slot(9, 50, per_minute=0, guild_cap=1, now_s=time.time())
        execute(db_path, "UPDATE slots SET owner = 'far'")
        assert await store.reclaim_orphans() == ()  # another machine: its heartbeat decides
        execute(db_path, "UPDATE instances SET beat_ms = ? WHERE id = 'far'", now - 1000)
        assert await store.reclaim_orphans() == ()
        stale = now - int(EXPIRES_S * 1000) - 1
        execute(db_path, "UPDATE instances SET beat_ms = ? WHERE id = 'far'", stale)
        assert await store.reclaim_orphans() == (theirs,)
        assert execute(db_path, "SELECT id FROM instances") == [(store.instance.id,)]
        assert execute(db_path, "SELECT * FROM slots") == []  # its slot freed, its guild's too
        await store.take_slot(10, 50, per_minute=0, guild_cap=1, now_s=time.time())


async def test_a_store_never_reclaims_its_own_rows_even_with_a_stale_heartbeat(
    db_path: Path,
) -> None:
    async with Store.open(db_path) as store:
        mine = await store.record_generation(**STORY)
        execute(db_path, "UPDATE instances SET beat_ms = 0")  # its event loop stalled
        assert await store.reclaim_orphans() == ()
        assert await status(store, mine) == "running"
        assert execute(db_path, "SELECT beat_ms > 0 FROM instances") == [(1,)]


async def test_the_heartbeat_beats_and_writes_a_removed_row_again(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(owners, "HEARTBEAT_S", 0.05)
    async with Store.open(db_path) as store:
        ((first,),) = execute(db_path, "SELECT beat_ms FROM instances")
        await asyncio.sleep(0.3)
        ((later,),) = execute(db_path, "SELECT beat_ms FROM instances")
        assert later > first
        execute(db_path, "DELETE FROM instances")  # another process took it for gone
        await asyncio.sleep(0.3)
        assert execute(db_path, "SELECT id FROM instances") == [(store.instance.id,)]
    assert execute(db_path, "SELECT * FROM instances") == []  # closing leaves


async def test_one_running_generation_per_user_across_processes(db_path: Path) -> None:
    with other_process(db_path) as other:
        taken = other.call("take_slot", 7, 1, per_minute=0, guild_cap=0, now_s=time.time())
        assert "ok" in taken
        async with Store.open(db_path) as store:
            with pytest.raises(SlotRefused) as refused:
                await store.take_slot(7, 2, per_minute=0, guild_cap=0, now_s=time.time())
            assert refused.value.rule == "running"
            other.kill()
            await store.reclaim_orphans()  # the slot of a gone process is free
            await store.take_slot(7, 2, per_minute=0, guild_cap=0, now_s=time.time())


async def test_starts_per_minute_slide_and_a_refusal_takes_nothing(store: Store) -> None:
    async def start(at: float) -> None:
        slot = await store.take_slot(2, None, per_minute=2, guild_cap=0, now_s=at)
        store.release_slot_soon(slot)

    await start(1000.0)
    await start(1001.0)
    with pytest.raises(SlotRefused) as refused:
        await start(1002.0)
    assert refused.value.rule == "per_minute"
    assert refused.value.retry_after_s == pytest.approx(58.0)
    with pytest.raises(SlotRefused):
        await start(1059.0)
    await start(1060.5)  # the start at 1000 left the window; the refusals counted none
    await store.take_slot(3, None, per_minute=0, guild_cap=0, now_s=1060.5)  # 0: no limit


async def test_a_guild_cap_counts_running_slots(store: Store) -> None:
    first = await store.take_slot(3, 20, per_minute=0, guild_cap=2, now_s=1.0)
    await store.take_slot(4, 20, per_minute=0, guild_cap=2, now_s=1.0)
    with pytest.raises(SlotRefused) as refused:
        await store.take_slot(5, 20, per_minute=0, guild_cap=2, now_s=1.0)
    assert refused.value.rule == "guild"
    await store.take_slot(5, 21, per_minute=0, guild_cap=2, now_s=1.0)  # another guild
    store.release_slot_soon(first)
    store.release_slot_soon(first)  # idempotent: counts down once
    await store.take_slot(6, 20, per_minute=0, guild_cap=2, now_s=1.0)
    with pytest.raises(SlotRefused):
        await store.take_slot(7, 20, per_minute=0, guild_cap=2, now_s=1.0)


async def test_forget_removes_the_users_slot_and_starts(store: Store, db_path: Path) -> None:
    await store.take_slot(8, 30, per_minute=5, guild_cap=1, now_s=time.time())
    await store.forget_user(8)
    assert execute(db_path, "SELECT * FROM slots") == execute(db_path, "SELECT * FROM starts") == []
    await store.take_slot(9, 30, per_minute=5, guild_cap=1, now_s=time.time())  # guild freed


async def test_a_take_cancelled_while_it_is_written_holds_no_slot(store: Store, db_path) -> None:
    taking = asyncio.create_task(store.take_slot(11, 40, per_minute=0, guild_cap=1, now_s=1.0))
    await asyncio.sleep(0)  # submitted to the writer, not yet committed
    taking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taking
    await store.mark_notice_shown(1)  # a later write: the writer has run the take by then
    await store.mark_notice_shown(2)  # and the release the take's end queued
    assert execute(db_path, "SELECT * FROM slots") == []
    await store.take_slot(11, 40, per_minute=0, guild_cap=1, now_s=2.0)
