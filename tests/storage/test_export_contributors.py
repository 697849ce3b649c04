"""What `muse tune` asks of the exports: self-ratings left out of the scores (include_self
False), and every row naming its contributors (conftest.rated and conftest.edited)."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import pytest

from storage.export import ExportFilters
from storage.store import Store
from tests.storage import peek


async def _export(store: Store, fmt: str, **filters: Any) -> list[dict[str, Any]]:
    out = io.StringIO()
    await store.export(fmt, out, ExportFilters(**filters))
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.fixture
def user(database) -> Any:
    salt = peek.rows(database, "SELECT value FROM meta WHERE key = 'export_salt'")[0][0]
    return lambda user_id: hashlib.sha256(f"{salt}:{user_id}".encode()).hexdigest()[:16]


def _by_id(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {row["metadata"]["generation_id"]: row["metadata"] for row in rows}


async def test_self_ratings_do_not_count_without_include_self(store: Store, rated) -> None:
    g = rated
    # g3's only rating is its requester's own 👍: a training row by default, flagged ...
    kept = _by_id(await _export(store, "sft"))
    assert kept[g["g3"]]["self_vote"] is True and kept[g["g3"]]["score"] == 1
    # ... and no row once self-ratings do not count.
    ignored = _by_id(await _export(store, "sft", include_self=False))
    assert g["g3"] not in ignored and set(ignored) == {g["g1"], g["g11"]}
    kto = _by_id(await _export(store, "kto", include_self=False))
    assert g["g3"] not in kto and all(not m["self_vote"] for m in kto.values())
    raw = {row["id"]: row for row in await _export(store, "raw", include_self=False)}
    assert raw[g["g3"]]["score"] == 0 and raw[g["g3"]]["feedback"][0]["is_self"] is True


async def test_a_voter_on_their_own_takes_does_not_decide_the_pair(
    store: Store, rated, user
) -> None:
    g = rated
    # g7 and g8 are user 5's: A by 6 and 7, B by 8; user 5 votes B too: a tie, no row.
    await store.record_comparison("a lamp", g["g7"], g["g8"], 5, "B")
    assert [r["metadata"]["source"] for r in await _export(store, "dpo")] == ["takes"]
    rows = await _export(store, "dpo", include_self=False)
    (pair,) = [r for r in rows if r["metadata"]["source"] == "comparison"]
    assert (pair["metadata"]["margin"], pair["metadata"]["self_vote"]) == (1, False)
    assert pair["metadata"]["voters"] == sorted([user(6), user(7), user(8)])


async def test_rows_name_requester_editor_raters_and_original(store: Store, edited, user) -> None:
    e = edited
    sft = _by_id(await _export(store, "sft"))
    g1 = sft[e["g1"]]
    assert (g1["requester"], g1["editor"], g1["original_id"]) == (user(1), None, None)
    assert g1["raters"] == sorted([user(2), user(3)])
    assert g1["contributors"] == sorted([user(1), user(2), user(3)])
    e1 = sft[e["e1"]]  # user 6's edit of user 1's g1, unrated
    assert (e1["requester"], e1["editor"], e1["original_id"]) == (user(1), user(6), e["g1"])
    assert (e1["user"], e1["raters"], e1["contributors"]) == (
        user(6), [], sorted([user(1), user(6)]),
    )  # fmt: skip
    e6 = sft[e["e6"]]  # user 8's edit of that edit: still user 1's request
    assert (e6["requester"], e6["editor"], e6["original_id"]) == (user(1), user(8), e["e1"])
    e5 = sft[e["e5"]]  # user 2's edit of user 3's g13, 👍 by 1
    assert e5["contributors"] == sorted([user(1), user(2), user(3)])

    dpo = await _export(store, "dpo")
    edit_pair = next(r["metadata"] for r in dpo if r["metadata"]["source"] == "edit")
    assert (edit_pair["editor"], edit_pair["original_id"]) == (user(6), e["g1"])
    assert edit_pair["contributors"] == sorted([user(1), user(2), user(3), user(6)])
    takes = next(r["metadata"] for r in dpo if r["metadata"]["source"] == "takes")
    assert (takes["editor"], takes["original_id"], takes["voters"]) == (None, None, [])

    raw = {row["id"]: row["metadata"] for row in await _export(store, "raw")}
    for gid in (e["g1"], e["e1"], e["e6"], e["e5"]):
        assert raw[gid] == sft[gid]  # raw's metadata, built by SQLite, says the same
