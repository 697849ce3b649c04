"""Each export format against the hand-built database of conftest.rated, row for row."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from datetime import date
from typing import Any

import pytest

from storage.export import ExportFilters
from storage.store import Store
from tests.storage.storage_data import COMPARE_PROMPT, OTHER_PROMPT, PROMPT

DAY1 = "2025-03-01T12:00:00.000Z"
DAY10 = "2025-03-10T12:00:00.000Z"
PARAMS = {"seed": 7, "temperature": 0.8}


async def _export(store: Store, fmt: str, **filters: Any) -> list[dict[str, Any]]:
    out = io.StringIO()
    count = await store.export(fmt, out, ExportFilters(**filters))
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert count == len(rows)
    return rows


@pytest.fixture
def user(db_path) -> Any:
    """Expected pseudonyms, computed independently of the code under test."""
    with sqlite3.connect(db_path) as conn:
        salt = conn.execute("SELECT value FROM meta WHERE key = 'export_salt'").fetchone()[0]
    return lambda user_id: hashlib.sha256(f"{salt}:{user_id}".encode()).hexdigest()[:16]


def _meta(
    gid,
    user,
    score,
    *,
    task="story",
    self_vote=False,
    created=DAY1,
    source="model",
    params=PARAMS,
    raters=(),
) -> dict[str, Any]:
    return {
        "generation_id": gid, "task": task, "model": "smollm2-135m", "model_revision": None,
        "params": params, "score": score, "self_vote": self_vote, "user": user,
        "created_utc": created, "source": source, "persona": params.get("persona"),
        "requester": user, "editor": None, "raters": sorted(raters),
        "contributors": sorted({user, *raters}), "original_id": None,
    }  # fmt: skip


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


async def test_sft(store: Store, rated, user) -> None:
    g = rated
    assert await _export(store, "sft") == [
        {"messages": [*PROMPT, *_assistant("O1")], "metadata": g1_meta(g, user)},
        {
            "messages": [*OTHER_PROMPT, *_assistant("O3")],
            "metadata": _meta(g["g3"], user(1), 1, task="poem", self_vote=True, raters=[user(1)]),
        },
        {
            "messages": [*PROMPT, *_assistant("O11")],
            "metadata": _meta(g["g11"], user(3), 1, created=DAY10, raters=[user(2)]),
        },
    ]


def g1_meta(g: dict[str, int], user) -> dict[str, Any]:
    """g1's metadata: 👍 by 2 and ⭐5 by 3."""
    return _meta(g["g1"], user(1), 2, raters=[user(2), user(3)])


async def test_kto(store: Store, rated, user) -> None:
    g = rated

    def row(gid, prompt, text, label, meta):
        return {"prompt": prompt, "completion": _assistant(text), "label": label, "metadata": meta}

    assert await _export(store, "kto") == [
        row(g["g1"], PROMPT, "O1", True, g1_meta(g, user)),
        row(g["g2"], PROMPT, "O2", False, _meta(g["g2"], user(2), -1, raters=[user(1)])),
        row(g["g3"], OTHER_PROMPT, "O3", True,
            _meta(g["g3"], user(1), 1, task="poem", self_vote=True, raters=[user(1)])),
        row(g["g11"], PROMPT, "O11", True,
            _meta(g["g11"], user(3), 1, created=DAY10, raters=[user(2)])),
    ]  # fmt: skip


async def test_dpo(store: Store, rated, user) -> None:
    g = rated
    voters = sorted([user(6), user(7), user(8)])  # 4 opted out
    assert await _export(store, "dpo") == [
        {
            "prompt": COMPARE_PROMPT,
            "chosen": _assistant("O7"),
            "rejected": _assistant("O8"),
            "metadata": {
                "source": "comparison", "margin": 1, "self_vote": False, "task": "describe",
                "model": "smollm2-135m", "persona": None, "voters": voters,
                "contributors": sorted({user(5), *voters}), "editor": None, "original_id": None,
                "chosen": _meta(g["g7"], user(5), 0, task="describe"),
                "rejected": _meta(g["g8"], user(5), 0, task="describe"),
            },
        },
        {
            "prompt": PROMPT,
            "chosen": _assistant("O1"),
            "rejected": _assistant("O2"),
            "metadata": {
                "source": "takes", "margin": 3, "self_vote": False, "task": "story",
                "model": "smollm2-135m", "persona": None, "voters": [],
                "contributors": sorted({user(1), user(2), user(3)}), "editor": None,
                "original_id": None,
                "chosen": g1_meta(g, user),
                "rejected": _meta(g["g2"], user(2), -1, raters=[user(1)]),
            },
        },
    ]  # fmt: skip


@pytest.fixture
def discord_id(db_path) -> Any:
    """Expected pseudonyms of guild, channel and message ids (a thread is a channel)."""
    with sqlite3.connect(db_path) as conn:
        salt = conn.execute("SELECT value FROM meta WHERE key = 'export_salt'").fetchone()[0]
    return lambda kind, value: hashlib.sha256(f"{salt}:{kind}:{value}".encode()).hexdigest()[:16]


async def test_raw(store: Store, rated, user, discord_id) -> None:
    g = rated
    rows = await _export(store, "raw")
    assert [row["id"] for row in rows] == [
        g[name] for name in ("g1", "g2", "g3", "g6", "g7", "g8", "g9", "g10", "g11")
    ]
    assert rows[0] == {
        "id": g["g1"], "root_id": g["g1"], "user": user(1), "task": "story", "messages": PROMPT,
        "params": PARAMS, "model_id": "smollm2-135m", "model_revision": None, "output": "O1",
        "created_utc": DAY1, "source": "model", "parent_id": None, "conversation_id": None,
        "thread_id": None, "guild_id": discord_id("guild", 100), "channel_id": None,
        "message_id": None, "followup_message_ids": [], "finish_reason": "stop", "tokens_in": 20,
        "tokens_out": 40, "ttft_ms": 80.0, "total_ms": 2000.0, "status": "done", "error": None,
        "finished_utc": DAY1, "deleted_utc": None, "fields": {}, "score": 2, "self_vote": False,
        "feedback": [
            {"thumbs": "up", "stars": None, "comment": None, "verdict": 1, "is_self": False,
             "created_utc": DAY1, "updated_utc": DAY1, "user": user(2)},
            {"thumbs": None, "stars": 5, "comment": "vivid", "verdict": 1, "is_self": False,
             "created_utc": DAY1, "updated_utc": DAY1, "user": user(3)},
        ],
        "comparisons": [],
        "metadata": g1_meta(g, user),
    }  # fmt: skip
    failed = rows[3]
    assert (failed["status"], failed["score"]) == ("failed", 1)
    compared = rows[4]
    assert [(c["winner"], c["user"]) for c in compared["comparisons"]] == [
        ("A", user(6)), ("A", user(7)), ("B", user(8)),
    ]  # fmt: skip
    assert compared["comparisons"][0]["prompt"] == "a lamp"
    assert rows[7]["feedback"] == []  # the opted-out rater's vote is left out
    text = json.dumps(rows)
    assert user(4) not in text and "O4" not in text and "O5" not in text


@pytest.mark.parametrize(
    ("fmt", "filters", "expected"),
    [
        ("sft", {"min_score": 2}, ["g1"]),
        ("kto", {"min_score": 2}, ["g1"]),
        ("dpo", {"min_score": 2}, [("g1", "g2")]),
        ("raw", {"min_score": 1}, ["g1", "g3", "g6", "g11"]),
        ("sft", {"since": date(2025, 3, 5)}, ["g11"]),
        ("kto", {"guild_id": 200}, ["g3"]),
        ("sft", {"task": "poem"}, ["g3"]),
        ("dpo", {"task": "describe"}, [("g7", "g8")]),
        ("raw", {"guild_id": 999}, []),
    ],
)
async def test_filters(store: Store, rated, fmt, filters, expected) -> None:
    rows = await _export(store, fmt, **filters)
    names = {gid: name for name, gid in rated.items()}
    if fmt == "dpo":
        found = [
            (names[r["metadata"]["chosen"]["generation_id"]],
             names[r["metadata"]["rejected"]["generation_id"]])
            for r in rows
        ]  # fmt: skip
    else:
        found = [names[r["metadata"]["generation_id"]] for r in rows]
    assert found == expected


async def test_a_requester_who_opts_out_later_disappears(store: Store, rated) -> None:
    await store.set_opted_out(1, True)
    sft = await _export(store, "sft")
    assert [row["metadata"]["generation_id"] for row in sft] == [rated["g11"]]
    # g2 is user 2's, but a regeneration of user 1's prompt: it goes too.
    raw_ids = {row["id"] for row in await _export(store, "raw")}
    assert rated["g2"] not in raw_ids and rated["g1"] not in raw_ids


async def test_empty_database_exports_nothing(store: Store) -> None:
    for fmt in ("sft", "dpo", "kto", "raw"):
        assert await _export(store, fmt) == []


async def test_unknown_format(store: Store) -> None:
    with pytest.raises(ValueError, match="unknown export format"):
        await store.export("csv", io.StringIO())


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_progress_bar_only_on_a_terminal(store: Store, rated, monkeypatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    await store.export("raw", io.StringIO(), progress=True)
    assert terminal.getvalue().endswith("] 100% 9 rows\n")
    piped = io.StringIO()
    monkeypatch.setattr("sys.stderr", piped)
    await store.export("raw", io.StringIO(), progress=True)
    assert piped.getvalue() == ""
