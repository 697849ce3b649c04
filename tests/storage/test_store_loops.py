"""The learning loop's rows through the store, on both engines: state, settings, history."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from storage.store import Store

GUILD = 1_234_567_890_123_456_789  # a Discord id: needs 64 bits


async def test_a_loop_is_off_until_set_and_keeps_what_was_set(store: Store) -> None:
    assert (await store.get_loop(GUILD)).enabled is False
    assert await store.enabled_loops() == []
    since = datetime(2025, 3, 2, 8, 0, tzinfo=UTC)
    state = await store.update_loop(
        GUILD, enabled=True, channel_id=GUILD + 1, confidence=0.95, state="arena",
        challenger="g1-v1", arena_since_utc=since, progress={"step": 3, "loss": 1.25},
    )  # fmt: skip
    assert state == await store.get_loop(GUILD)
    assert (state.enabled, state.channel_id, state.confidence) == (True, GUILD + 1, 0.95)
    assert (state.state, state.challenger, state.arena_since_utc) == ("arena", "g1-v1", since)
    assert state.progress == {"step": 3, "loss": 1.25}
    assert [loop.guild_id for loop in await store.enabled_loops()] == [GUILD]
    await store.update_loop(GUILD, enabled=False, challenger=None)
    assert await store.enabled_loops() == []
    assert (await store.get_loop(GUILD)).challenger is None
    with pytest.raises(ValueError, match="state must be one of"):
        await store.update_loop(GUILD, state="dreaming")


async def test_the_loop_history_is_newest_first(store: Store, clock) -> None:
    for n, event in enumerate(("tuned", "arena", "promoted")):
        await store.add_loop_event(GUILD, event, f"g1-v{n}", "why", {"votes": n})
        clock.advance(minutes=1)
    history = await store.loop_history(GUILD, limit=2)
    assert [(e.event, e.model, e.figures) for e in history] == [
        ("promoted", "g1-v2", {"votes": 2}),
        ("arena", "g1-v1", {"votes": 1}),
    ]
    with pytest.raises(ValueError, match="event must be one of"):
        await store.add_loop_event(GUILD, "exploded", None, "")
