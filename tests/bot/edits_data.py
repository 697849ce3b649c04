"""A community's edits in a real database, for the tuning and loop CLI tests."""

from __future__ import annotations

from pathlib import Path

from storage.store import Store


async def community(db: Path, edits: int, *, guild: int = 1, first: int = 0) -> None:
    """`edits` answered prompts in `guild`, each corrected by a member: eight askers and
    eight editors take turns, so no one supplies more than a quarter of the rows."""
    async with Store.open(db) as store:
        for n in range(first, first + edits):
            messages = [{"role": "user", "content": f"Say something kind about topic {n}."}]
            gid = await store.record_generation(
                user_id=100 + n % 8,
                task="generate",
                messages=messages,
                params={},
                model_id="base",
                guild_id=guild,
            )
            await store.finish_generation(gid, f"Topic {n} is fine.", "stop", 5, 5, 1.0, 10.0)
            await store.record_edit(
                gid, 200 + n % 8, f"Verily, topic {n} is wonderful.", guild_id=guild, channel_id=2
            )
