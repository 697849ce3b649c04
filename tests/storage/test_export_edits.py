"""Edits in every export format (conftest.edited), and raw rows' pseudonymised Discord ids."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import date
from typing import Any

import pytest

from storage.export import ExportFilters
from storage.export_rows import Pseudonyms
from storage.store import Store
from tests.storage import peek
from tests.storage.storage_data import PROMPT


async def _export(store: Store, fmt: str, **filters: Any) -> list[dict[str, Any]]:
    out = io.StringIO()
    count = await store.export(fmt, out, ExportFilters(**filters))
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert count == len(rows)
    return rows


def _names(ids: dict[str, int], rows: list[dict[str, Any]]) -> list[str]:
    by_id = {gid: name for name, gid in ids.items()}
    return [by_id[row["metadata"]["generation_id"]] for row in rows]


def _pairs(ids: dict[str, int], rows: list[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
    by_id = {gid: name for name, gid in ids.items()}
    return [
        (
            row["metadata"]["source"],
            by_id[row["metadata"]["chosen"]["generation_id"]],
            by_id[row["metadata"]["rejected"]["generation_id"]],
            row["metadata"]["margin"],
        )
        for row in rows
    ]


@pytest.fixture
def salt(database) -> str:
    return peek.rows(database, "SELECT value FROM meta WHERE key = 'export_salt'")[0][0]


async def test_sft_keeps_edits_unless_rated_down(store: Store, edited) -> None:
    rows = await _export(store, "sft")
    assert _names(edited, rows) == ["g1", "g3", "g11", "e1", "e5", "e6", "e8"]
    e1 = rows[3]
    assert e1["messages"] == [*PROMPT, {"role": "assistant", "content": "O1, better."}]
    assert (e1["metadata"]["source"], e1["metadata"]["score"]) == ("edit", 0)
    assert [row["metadata"]["source"] for row in rows] == ["model"] * 3 + ["edit"] * 4
    e5 = rows[4]["metadata"]
    assert (e5["persona"], e5["params"]) == ("Pirate", {"seed": 9, "persona": "Pirate"})
    assert all(row["metadata"]["persona"] is None for row in rows if row is not rows[4])
    # --min-score N: model rows need score >= N, edits score + 1 >= N (the editor's vote).
    assert _names(edited, await _export(store, "sft", min_score=2)) == ["g1", "e5"]
    assert _names(edited, await _export(store, "sft", min_score=1)) == [
        "g1", "g3", "g11", "e1", "e5", "e6", "e8",
    ]  # fmt: skip


async def test_kto_edits_are_desirable(store: Store, edited) -> None:
    rows = await _export(store, "kto")
    assert _names(edited, rows) == ["g1", "g2", "g3", "g11", "e1", "e5", "e6", "e8"]
    assert [row["label"] for row in rows] == [True, False, True, True, True, True, True, True]
    sources = [row["metadata"]["source"] for row in rows]
    assert sources == ["model"] * 4 + ["edit"] * 4
    assert _names(edited, await _export(store, "kto", min_score=2)) == ["g1", "e5"]


async def test_dpo_edit_over_its_original_never_as_takes(store: Store, edited) -> None:
    rows = await _export(store, "dpo")
    assert _pairs(edited, rows) == [
        ("comparison", "g7", "g8", 1),
        ("takes", "g1", "g2", 3),  # e1 and e2 share g1's prompt and root, yet are no takes
        ("edit", "e1", "g1", 1),  # 1 + 0 - 2 is below one vote: 1
        ("edit", "e5", "g13", 2),  # the editor's vote and 👍 by 1
        ("edit", "e6", "e1", 1),  # e8's original g6 failed: no row
    ]  # fmt: skip
    e1 = rows[2]
    assert e1["prompt"] == PROMPT
    assert e1["chosen"] == [{"role": "assistant", "content": "O1, better."}]
    assert e1["rejected"] == [{"role": "assistant", "content": "O1"}]
    meta = e1["metadata"]
    assert (meta["chosen"]["source"], meta["rejected"]["source"]) == ("edit", "model")
    assert (meta["task"], meta["model"], meta["persona"], meta["self_vote"]) == (
        "story", "smollm2-135m", None, False,
    )  # fmt: skip
    assert rows[3]["metadata"]["persona"] == "Pirate"
    assert [row["metadata"]["chosen"]["source"] for row in rows[:2]] == ["model", "model"]
    strong = await _export(store, "dpo", min_score=2)
    assert _pairs(edited, strong) == [("takes", "g1", "g2", 3), ("edit", "e5", "g13", 2)]


async def test_dpo_original_is_checked_without_the_filters(store: Store, edited) -> None:
    # The edits were made nine days in: --since keeps them although their originals are older.
    rows = await _export(store, "dpo", since=date(2025, 3, 5))
    assert _pairs(edited, rows) == [
        ("edit", "e1", "g1", 1), ("edit", "e5", "g13", 2), ("edit", "e6", "e1", 1),
    ]  # fmt: skip


async def test_raw_has_edits_with_their_source(store: Store, edited) -> None:
    rows = await _export(store, "raw")
    names = _names(edited, rows)
    assert names == [
        "g1", "g2", "g3", "g6", "g7", "g8", "g9", "g10", "g11",
        "e1", "e2", "g13", "e5", "e6", "e8",
    ]  # fmt: skip
    by_name = dict(zip(names, rows, strict=True))
    assert by_name["e2"]["source"] == by_name["e2"]["metadata"]["source"] == "edit"
    assert (by_name["e2"]["score"], by_name["e2"]["parent_id"]) == (-1, edited["g2"])
    assert by_name["g1"]["source"] == "model"
    assert by_name["e5"]["metadata"]["persona"] == "Pirate"
    text = json.dumps(rows)
    for hidden in ("O9 by an opted-out editor", "O12", "O3, deleted."):
        assert hidden not in text


@pytest.mark.parametrize("who", [6, 1])
async def test_editor_and_original_requester_opt_outs_apply(store: Store, edited, who) -> None:
    await store.set_opted_out(who, True)
    for fmt in ("sft", "kto", "raw"):
        names = _names(edited, await _export(store, fmt))
        assert "e1" not in names, fmt  # user 6 edited g1, which user 1 requested
        assert "e6" not in names, fmt  # and e6 edits e1: the chain of edits counts
    assert all("e1" not in pair for pair in _pairs(edited, await _export(store, "dpo")))


async def test_conversation_owner_opt_out_applies_to_an_edit(store: Store, make_generation):
    thread = await store.create_conversation(777, user_id=1)
    turn = await make_generation(user_id=1, output="a", conversation_id=thread.id)
    await store.record_feedback(turn, 3, thumbs="up")
    edit = await store.record_edit(turn, 2, "a, edited", guild_id=100, channel_id=777)
    assert {row["metadata"]["generation_id"] for row in await _export(store, "sft")} == {
        turn, edit,
    }  # fmt: skip
    await store.set_opted_out(1, True)
    assert await _export(store, "sft") == []
    assert await _export(store, "raw") == []


async def test_raw_pseudonymises_discord_ids(store: Store, salt, make_generation) -> None:
    snowflake = 1_234_567_890_123_456_789
    thread = await store.create_conversation(snowflake, user_id=1, guild_id=10, channel_id=20)
    turn = await make_generation(
        user_id=1, guild_id=10, channel_id=snowflake, message_id=snowflake,
        conversation_id=thread.id,
    )  # fmt: skip  # Discord gives a thread its starter message's id
    await store.set_followup_message_ids(turn, [snowflake + 2, snowflake + 1])
    edit = await store.record_edit(turn, 2, "edited", guild_id=10, channel_id=snowflake)
    rows = await _export(store, "raw")
    assert [row["id"] for row in rows] == [turn, edit]
    hashed = Pseudonyms(salt)

    def expected(kind: str, value: int) -> str:
        digest = hashlib.sha256(f"{salt}:{kind}:{value}".encode()).hexdigest()[:16]
        assert hashed.id_of(kind, value) == digest
        return digest

    row = rows[0]
    assert row["guild_id"] == expected("guild", 10)
    assert row["channel_id"] == row["thread_id"] == expected("channel", snowflake)
    assert row["message_id"] == expected("message", snowflake) != row["channel_id"]
    assert row["followup_message_ids"] == [
        expected("message", snowflake + 2), expected("message", snowflake + 1),
    ]  # fmt: skip
    assert row["conversation_id"] == thread.id  # the store's own numbering: not a Discord id
    assert (rows[1]["message_id"], rows[1]["thread_id"]) == (None, row["thread_id"])
    assert rows[1]["followup_message_ids"] == []
    kinds = {hashed.of(10), expected("guild", 10), expected("channel", 10), expected("message", 10)}
    assert len(kinds) == 4  # one id, four kinds: four pseudonyms
    text = json.dumps(rows)
    for clear in (snowflake, snowflake + 1, snowflake + 2):
        assert str(clear) not in text
    assert '"guild_id": 10' not in text


def test_pseudonyms_refuse_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        Pseudonyms("salt").id_of("user", 1)
    assert Pseudonyms("salt").id_of("guild", None) is None


async def test_an_edit_outlives_its_purged_original(store: Store, clock, make_generation):
    original = await make_generation(user_id=1, output="old")
    clock.advance(days=40)
    edit = await store.record_edit(original, 2, "new", guild_id=100, channel_id=1)
    await store.purge_older_than(30)
    survivor = await store.get_generation(edit)
    assert (survivor.parent_id, survivor.source) == (None, "edit")
    assert [row["metadata"]["generation_id"] for row in await _export(store, "sft")] == [edit]
    assert await _export(store, "dpo") == []
