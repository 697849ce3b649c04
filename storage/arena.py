"""Arena votes: comparisons whose two generations come from different models.

`arena_votes` reads them (one per voter per pair of generations, the latest); `leaderboard_votes`
turns them into the `storage.leaderboard.Vote`s that `build_leaderboard` fits.
"""

from __future__ import annotations

from collections.abc import Iterable

import aiosqlite

from storage.leaderboard import Vote
from storage.rows import ArenaVote

# Both generations are model answers (an edit is a member's text, not its model's) and neither
# is deleted; the voter has not opted out. `record_comparison` keeps one vote per voter per pair
# in either order; the window still picks the latest should a file hold both orders.
_ARENA_SQL = """
SELECT model_a, model_b, winner, is_self, voter FROM (
    SELECT ga.model_id AS model_a, gb.model_id AS model_b, k.winner, k.user_id AS voter,
        k.user_id IN (ga.user_id, gb.user_id) AS is_self, k.id,
        ROW_NUMBER() OVER (
            PARTITION BY k.user_id,
                CASE WHEN k.generation_a_id < k.generation_b_id
                    THEN k.generation_a_id ELSE k.generation_b_id END,
                CASE WHEN k.generation_a_id < k.generation_b_id
                    THEN k.generation_b_id ELSE k.generation_a_id END
            ORDER BY k.updated_utc DESC, k.id DESC) AS latest
    FROM comparisons AS k
        JOIN generations AS ga ON ga.id = k.generation_a_id
        JOIN generations AS gb ON gb.id = k.generation_b_id
        LEFT JOIN users AS ku ON ku.user_id = k.user_id
    WHERE ga.model_id != gb.model_id
        AND ga.status != 'deleted' AND gb.status != 'deleted'
        AND ga.source = 'model' AND gb.source = 'model'
        AND COALESCE(ku.opted_out, 0) = 0
        AND (:guild_id IS NULL OR :guild_id = ga.guild_id AND :guild_id = gb.guild_id)
        AND (:task IS NULL OR :task = ga.task AND :task = gb.task)) AS votes
WHERE latest = 1
ORDER BY id
"""


async def arena_votes(
    conn: aiosqlite.Connection, guild_id: int | None, task: str | None
) -> list[ArenaVote]:
    """The arena votes, oldest first; with `guild_id` or `task`, those whose two generations
    both are of that guild or task."""
    rows = await conn.execute_fetchall(_ARENA_SQL, {"guild_id": guild_id, "task": task})
    return [ArenaVote(a, b, w, bool(is_self), voter) for a, b, w, is_self, voter in rows]


def leaderboard_votes(votes: Iterable[ArenaVote], *, include_self: bool = True) -> list[Vote]:
    """The leaderboard's `Vote`s; `include_self=False` leaves out voters' own generations."""
    return [
        Vote(vote.model_a, vote.model_b, vote.winner)
        for vote in votes
        if include_self or not vote.is_self
    ]
