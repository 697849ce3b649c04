"""The training data rules (generation/tuning/rules.py) on examples built as `muse export`
writes them: pure, no model, no database (the CLI tests run them on a real one)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generation.tuning.data import WHO, examples, split
from generation.tuning.errors import TuningError
from generation.tuning.rules import RULES, Rules, decide, screen, screen_all


def sft(n: int, *people: str, text: str | None = None, **meta: Any) -> dict[str, Any]:
    """An sft export row for prompt n (text: its reply) made by `people`."""
    messages = [
        {"role": "user", "content": f"prompt {n}"},
        {"role": "assistant", "content": text or f"reply {n}"},
    ]
    return {"messages": messages, "metadata": {"contributors": list(people), **meta}}


def edit(n: int, editor: str, original: int, generation_id: int, text: str) -> dict[str, Any]:
    return sft(
        n,
        editor,
        "requester",
        text=text,
        source="edit",
        editor=editor,
        original_id=original,
        generation_id=generation_id,
    )


def share_of(kept: list[dict[str, Any]], member: str) -> float:
    return sum(member in e[WHO].contributors for e in kept) / len(kept)


def test_one_members_twenty_edits_are_capped_at_the_share() -> None:
    # 20 edits by "eve" of 20 different members' texts, and 20 rows of 20 other members.
    rows = [edit(n, "eve", n, 100 + n, f"eve's text {n}") for n in range(20)]
    for row, n in zip(rows, range(20), strict=True):
        row["metadata"]["contributors"] = ["eve", f"asker{n}"]
    rows += [sft(100 + n, f"member{n}") for n in range(20)]
    result = screen(examples("sft", rows), Rules())
    # eve supplies at most a quarter: 20 - d <= 0.25 (40 - d) gives d = 14 dropped.
    assert result.dropped == {"one_edit_per_editor": 0, "identical_texts": 0, "max_share": 14}
    assert len(result.examples) == 26 and share_of(result.examples, "eve") <= 0.25
    assert len(result.contributors) == 1 + 6 + 20  # eve, the askers kept, the members
    # Seeded: the same data gives the same set, whatever its order.
    shuffled = list(rows)
    random.Random(1).shuffle(shuffled)
    again = screen(examples("sft", shuffled), Rules())
    assert sorted(map(str, again.examples)) == sorted(map(str, result.examples))
    loose = screen(examples("sft", rows), Rules(max_share=0.5))
    assert loose.dropped["max_share"] == 0 and len(loose.examples) == 40


@settings(max_examples=60, deadline=None)
@given(
    owners=st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=3), max_size=40),
    share=st.sampled_from([0.1, 0.25, 0.5, 1.0]),
)
def test_no_member_is_left_over_the_share(owners: list[list[int]], share: float) -> None:
    rows = [sft(n, *(f"m{p}" for p in people)) for n, people in enumerate(owners)]
    result = screen(examples("sft", rows), Rules(max_share=share))
    kept = result.examples
    for member in result.contributors:
        assert share_of(kept, member) <= share + 1e-9
    assert len(kept) + result.dropped["max_share"] == len(rows)


def test_one_edit_per_editor_per_original_the_latest() -> None:
    rows = [
        edit(1, "eve", 7, 10, "first try"),
        edit(1, "eve", 7, 12, "third try"),  # the latest of eve's edits of generation 7
        edit(1, "eve", 7, 11, "second try"),
        edit(1, "bob", 7, 13, "bob's try"),  # another editor of the same original counts
        edit(2, "eve", 8, 14, "another original"),
    ]
    result = screen(examples("sft", rows), Rules(max_share=1))
    texts = [e["completion"][0]["content"] for e in result.examples]
    assert texts == ["third try", "bob's try", "another original"]
    assert result.dropped["one_edit_per_editor"] == 2


def test_identical_texts_count_once() -> None:
    rows = [sft(1, "a"), sft(1, "b"), sft(1, "c", text="other"), sft(2, "d", text="reply 1")]
    result = screen(examples("sft", rows), Rules(max_share=1))
    assert [e[WHO].contributors for e in result.examples] == [("a",), ("c",), ("d",)]
    assert result.dropped["identical_texts"] == 1  # same prompt and reply; a reply elsewhere
    pair = {"prompt": [{"role": "user", "content": "p"}]}
    pairs = [
        {**pair, "chosen": [{"role": "assistant", "content": "yes"}], "rejected": [r]}
        for r in ({"role": "assistant", "content": "no"}, {"role": "assistant", "content": "x"})
    ]
    assert screen(examples("dpo", pairs), Rules(max_share=1)).dropped["identical_texts"] == 1


def test_too_few_contributors_are_refused_with_the_reason() -> None:
    rows = [sft(n, f"m{n % 2}") for n in range(12)]
    screened = screen_all({"sft": examples("sft", rows)}, Rules(max_share=1))
    with pytest.raises(TuningError, match="from 2 members.*at least 3"):
        decide(screened, "auto", Rules(max_share=1))
    assert decide(screened, "sft", Rules(max_share=1, min_contributors=2)).method == "sft"
    anonymous = [{"messages": row["messages"]} for row in rows]  # a file naming no one
    screened = screen_all({"sft": examples("sft", anonymous)}, Rules())
    with pytest.raises(TuningError, match="from 0 members"):
        decide(screened, "auto", Rules())


def test_the_split_names_the_members_it_trains_on() -> None:
    rows = [sft(n, f"m{n}") for n in range(10)]
    data = split(examples("sft", rows), 0.2, seed=0)
    held = {e["prompt"][0]["content"] for e in data.eval}
    expected = {f"m{n}" for n in range(10) if f"prompt {n}" not in held}
    assert set(data.contributors) == expected and len(expected) == 8
    assert all(WHO not in e for e in data.train + data.eval)


def test_rules_are_checked() -> None:
    assert RULES == ("one_edit_per_editor", "identical_texts", "max_share")
    for bad in ({"max_share": 0}, {"max_share": 1.5}, {"min_contributors": 0}):
        with pytest.raises(TuningError):
            Rules(**bad)
