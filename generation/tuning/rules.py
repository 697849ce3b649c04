"""The training data rules: what a tune keeps of the exported examples, so that no one member
writes a community's model. Pure; no torch.

In order, per format (each is a candidate training set):
1. one edit per editor per original: a member's newer edit of the same text replaces the older;
2. identical texts once: the same prompt and completion (dpo: chosen text) counts once, the
   first exported;
3. no member supplies more than `max_share` of the set: a member supplies a row when they are
   among its contributors (requester, editor, counted raters or voters). While someone does,
   rows of the member furthest over are dropped, chosen by a seeded hash of their text (the
   same data gives the same set, and a row keeps its fate as the export grows).
Then the chosen method's rows must come from at least `min_contributors` members.

Self-ratings are the export's business (`muse tune` exports without them): the rules see only
the rows and who made them (`data.Contribution`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from generation.tuning.data import GROUP, WHO, Contribution, count
from generation.tuning.errors import TuningError
from generation.tuning.plan import Choice, choose_method

MAX_SHARE = 0.25
MIN_CONTRIBUTORS = 3
#: The rules that drop rows, in the order they run; the keys of `Screened.dropped`.
RULES = ("one_edit_per_editor", "identical_texts", "max_share")
_EPSILON = 1e-9  # shares are compared as floats: n * 0.25 must not lose a row to rounding


@dataclass(frozen=True, slots=True)
class Rules:
    """How strict the rules are; `seed` picks which rows over the share go."""

    max_share: float = MAX_SHARE
    min_contributors: int = MIN_CONTRIBUTORS
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.max_share <= 1:
            raise TuningError(f"max_share must be above 0 and at most 1; got {self.max_share}.")
        if self.min_contributors < 1:
            raise TuningError(f"min_contributors must be at least 1; got {self.min_contributors}.")


@dataclass(frozen=True, slots=True)
class Screened:
    """One format's examples after the rules, how many rows each rule dropped, and the
    members the kept rows come from."""

    examples: list[dict[str, Any]]
    dropped: dict[str, int] = field(default_factory=dict)
    contributors: tuple[str, ...] = ()

    def describe(self) -> str:
        """Rows dropped per rule, e.g. 'one_edit_per_editor 2, identical_texts 0, max_share 5'."""
        return ", ".join(f"{rule} {self.dropped.get(rule, 0)}" for rule in RULES)


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def screen(examples: list[dict[str, Any]], rules: Rules) -> Screened:
    """Apply the three rules to one format's examples (order kept)."""
    kept, edits = _latest_edits(examples)
    kept, identical = _distinct_texts(kept)
    kept, over = _cap_share(kept, rules.max_share, rules.seed)
    people = sorted({p for e in kept for p in _who(e).contributors})
    dropped = dict(zip(RULES, (edits, identical, over), strict=True))
    return Screened(kept, dropped, tuple(people))


def screen_all(loaded: Mapping[str, list[dict[str, Any]]], rules: Rules) -> dict[str, Screened]:
    """`screen` for every format."""
    return {fmt: screen(examples, rules) for fmt, examples in loaded.items()}


def decide(screened: Mapping[str, Screened], method: str, rules: Rules) -> Choice:
    """The method the kept rows support (`plan.choose_method`), if they come from enough
    members; else a `TuningError` saying why."""
    try:
        choice = choose_method(count({f: s.examples for f, s in screened.items()}), method)
    except TuningError as exc:
        capped = {f: s.dropped.get("max_share", 0) for f, s in screened.items()}
        shown = ", ".join(f"{f} {n}" for f, n in capped.items() if n)
        if not shown:
            raise
        raise TuningError(
            f"{exc} The data rules dropped rows ({shown}) so that no member supplies more than "
            f"{rules.max_share:g} of a training set: more members' ratings and edits are needed."
        ) from exc
    members = len(screened[choice.method].contributors)
    if members < rules.min_contributors:
        raise TuningError(
            f"Too few contributors: the {choice.method.upper()} rows come from {members} "
            f"member{_s(members)}, and training needs rows from at least "
            f"{rules.min_contributors} (min_contributors), so that no one member's texts make "
            "a model. More members' ratings and edits are needed."
        )
    return choice


def _who(example: dict[str, Any]) -> Contribution:
    return example.get(WHO) or Contribution()


def _latest_edits(examples: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """One edit per (editor, original): the newest (highest generation id, else the last)."""
    latest: dict[tuple[str, int], tuple[int, int]] = {}  # key -> (generation id, index)
    for index, example in enumerate(examples):
        who = _who(example)
        if who.editor is None or who.original_id is None:
            continue
        key = (who.editor, who.original_id)
        rank = (who.generation_id if who.generation_id is not None else -1, index)
        if key not in latest or rank > latest[key]:
            latest[key] = rank
    winners = {index for _, index in latest.values()}
    kept = [
        e
        for i, e in enumerate(examples)
        if i in winners or _who(e).editor is None or _who(e).original_id is None
    ]
    return kept, len(examples) - len(kept)


def _text_key(example: dict[str, Any]) -> str:
    """The prompt and the trained-toward text: completion, or a pair's chosen reply."""
    text = example["chosen"] if "chosen" in example else example["completion"]
    return json.dumps([example["prompt"], text], ensure_ascii=False, sort_keys=True)


def _distinct_texts(examples: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    seen: set[str] = set()
    kept = []
    for example in examples:
        key = _text_key(example)
        if key not in seen:
            seen.add(key)
            kept.append(example)
    return kept, len(examples) - len(kept)


def _rank(example: dict[str, Any], seed: int) -> str:
    columns = {k: v for k, v in example.items() if k not in (WHO, GROUP)}
    text = json.dumps(columns, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


def _cap_share(
    examples: list[dict[str, Any]], max_share: float, seed: int
) -> tuple[list[dict[str, Any]], int]:
    """Drop rows until no member is among the contributors of more than `max_share` of them.

    Each round takes the member furthest over (most rows; then the smallest pseudonym) and
    drops just enough of their rows, lowest seeded rank first, that they alone would fit:
    d rows where c - d <= share * (n - d). Dropping shrinks n, so others are checked again.
    """
    kept = list(examples)
    while kept:
        n = len(kept)
        rows_of = Counter(p for e in kept for p in set(_who(e).contributors))
        over = [(c, p) for p, c in rows_of.items() if c > max_share * n + _EPSILON]
        if not over:
            break
        c, member = min(over, key=lambda cp: (-cp[0], cp[1]))
        d = c if max_share >= 1 else math.ceil((c - max_share * n) / (1 - max_share) - _EPSILON)
        theirs = [e for e in kept if member in _who(e).contributors]
        theirs.sort(key=lambda e: _rank(e, seed))
        gone = {id(e) for e in theirs[: max(1, min(d, c))]}
        kept = [e for e in kept if id(e) not in gone]
    return kept, len(examples) - len(kept)
