"""The pure row builders of storage/export_rows.py, without a database."""

from __future__ import annotations

import dataclasses
import hashlib

from storage.export_rows import (
    ExportGeneration,
    Pseudonyms,
    comparison_outcome,
    dpo_row,
    kto_row,
    sft_row,
    take_pairs,
)

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def _take(id_: int, score: int, *, root: int = 1, prompt=PROMPT, self_vote=False):
    return ExportGeneration(
        id=id_, root_id=root, user="u", task="story", model_id="m", model_revision="r1",
        params={"seed": id_}, messages=prompt, output=f"out {id_}", score=score,
        self_vote=self_vote, created_utc="2025-01-01T00:00:00.000Z", requester="u",
        raters=(f"r{id_}",),
    )  # fmt: skip


def _meta(id_: int, score: int, self_vote=False) -> dict:
    return {
        "generation_id": id_, "task": "story", "model": "m", "model_revision": "r1",
        "params": {"seed": id_}, "score": score, "self_vote": self_vote, "user": "u",
        "created_utc": "2025-01-01T00:00:00.000Z", "source": "model", "persona": None,
        "requester": "u", "editor": None, "raters": [f"r{id_}"], "contributors": [f"r{id_}", "u"],
        "original_id": None,
    }  # fmt: skip


def test_sft_row() -> None:
    assert sft_row(_take(3, 2, self_vote=True)) == {
        "messages": [*PROMPT, {"role": "assistant", "content": "out 3"}],
        "metadata": _meta(3, 2, self_vote=True),
    }


def test_kto_row_labels_by_sign() -> None:
    assert kto_row(_take(4, -2)) == {
        "prompt": PROMPT,
        "completion": [{"role": "assistant", "content": "out 4"}],
        "label": False,
        "metadata": _meta(4, -2),
    }
    assert kto_row(_take(5, 1))["label"] is True


def test_dpo_row() -> None:
    row = dpo_row(_take(1, 3), _take(2, -1), source="takes", margin=4, self_vote=False)
    assert row == {
        "prompt": PROMPT,
        "chosen": [{"role": "assistant", "content": "out 1"}],
        "rejected": [{"role": "assistant", "content": "out 2"}],
        "metadata": {
            "source": "takes", "margin": 4, "self_vote": False, "task": "story", "model": "m",
            "persona": None, "voters": [], "contributors": ["r1", "r2", "u"], "editor": None,
            "original_id": None, "chosen": _meta(1, 3), "rejected": _meta(2, -1),
        },
    }  # fmt: skip


def test_dpo_row_of_an_edit_and_of_votes_names_everyone() -> None:
    edit = dataclasses.replace(_take(5, 1), source="edit", parent_id=1, user="e")
    row = dpo_row(edit, _take(1, 0), source="edit", margin=2, self_vote=False)["metadata"]
    assert (row["editor"], row["original_id"]) == ("e", 1)
    assert row["chosen"]["contributors"] == ["e", "r5", "u"]
    assert row["contributors"] == ["e", "r1", "r5", "u"]
    voted = dpo_row(_take(1, 0), _take(2, 0), source="comparison", margin=1, self_vote=False,
                    voters=("v1", "v2"))["metadata"]  # fmt: skip
    assert voted["voters"] == ["v1", "v2"] and voted["editor"] is None
    assert voted["contributors"] == ["r1", "r2", "u", "v1", "v2"]


def test_take_pairs_higher_score_is_chosen() -> None:
    takes = [_take(1, 0), _take(2, 2), _take(3, 0), _take(4, -1)]
    pairs = [(c.id, r.id) for c, r in take_pairs(takes)]
    assert pairs == [(2, 1), (1, 4), (2, 3), (2, 4), (3, 4)]  # equal scores (1, 3) give none
    assert [(c.id, r.id) for c, r in take_pairs(takes, min_margin=3)] == [(2, 4)]


def test_take_pairs_only_within_one_prompt() -> None:
    continuation = [
        *PROMPT,
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": "go on"},
    ]
    takes = [_take(1, 1), _take(2, -1, prompt=continuation), _take(3, -1)]
    assert [(c.id, r.id) for c, r in take_pairs(takes)] == [(1, 3)]
    assert list(take_pairs([_take(1, 1)])) == []


def test_comparison_outcome() -> None:
    assert comparison_outcome(2, 1) == ("A", 1)
    assert comparison_outcome(0, 3) == ("B", 3)
    assert comparison_outcome(2, 2) is None


def test_pseudonyms_are_salted_and_stable() -> None:
    one, other = Pseudonyms("salt-a"), Pseudonyms("salt-b")
    assert one.of(42) == one.of(42) == hashlib.sha256(b"salt-a:42").hexdigest()[:16]
    assert one.of(42) != other.of(42) and one.of(42) != one.of(43)
    assert "42" not in one.of(42)
