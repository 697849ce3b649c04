"""Export files in, TRL datasets' rows out, with a held-out split that keeps prompts whole.

`muse export` writes TRL's conversational formats. dpo and kto rows are already what TRL's
trainers read. sft rows are `{"messages": [...]}`, on which SFTTrainer would train on the
prompt too; they become prompt–completion rows (the prompt is every message but the final
reply), for which TRL's loss covers the reply only. Each example also carries, until it is
split, who made it (`Contribution`, from the row's metadata): what the data rules need.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generation.tuning.errors import TuningError

FORMATS = ("sft", "dpo", "kto")
#: The columns each format trains on; everything else (metadata) stays behind.
COLUMNS = {
    "sft": ("prompt", "completion"),
    "dpo": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
}
GROUP = "group"  # the prompt-group key each example carries until it is split
WHO = "who"  # the example's `Contribution`, carried until it is split


@dataclass(frozen=True, slots=True)
class Contribution:
    """Who made a row (export pseudonyms): everyone whose part it holds, and for an edit its
    editor and the generation it corrects; `generation_id` orders edits (later = newer)."""

    contributors: tuple[str, ...] = ()
    editor: str | None = None
    original_id: int | None = None
    generation_id: int | None = None


@dataclass(frozen=True, slots=True)
class DataCounts:
    """How much of each kind the export files hold: what `choose_method` decides on."""

    sft: int = 0
    dpo: int = 0
    kto_desirable: int = 0
    kto_undesirable: int = 0

    @property
    def kto(self) -> int:
        return self.kto_desirable + self.kto_undesirable


@dataclass(frozen=True, slots=True)
class SplitCounts:
    """One split's size: rows, prompt groups and, for KTO, the labels."""

    rows: int
    groups: int
    desirable: int | None = None
    undesirable: int | None = None


@dataclass(frozen=True, slots=True)
class Split:
    """Training and held-out examples (TRL columns only)."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    counts: dict[str, SplitCounts]
    contributors: tuple[str, ...] = ()  # of the training rows: whose data the adapter learns


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """The rows of a JSONL file; blank lines are skipped, a broken one is a `TuningError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TuningError(f"Cannot read the export file {str(path)!r}: {exc.strerror}.") from exc
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TuningError(f"{path}:{number} is not JSON ({exc.msg}).") from exc
        if not isinstance(row, dict):
            raise TuningError(f"{path}:{number} is not a JSON object.")
        rows.append(row)
    return rows


def examples(fmt: str, rows: Iterable[dict[str, Any]], where: str = "") -> list[dict[str, Any]]:
    """Training examples of format `fmt` (sft, dpo, kto) with their prompt-group key."""
    if fmt not in COLUMNS:
        raise TuningError(f"Unknown export format {fmt!r}: use one of {', '.join(FORMATS)}.")
    out = []
    for number, row in enumerate(rows, 1):
        try:
            example = _sft_example(row) if fmt == "sft" else {c: row[c] for c in COLUMNS[fmt]}
            _check_messages(example["prompt"], "prompt")
        except (KeyError, TypeError, ValueError) as exc:
            raise TuningError(f"{where or fmt} row {number} is not a {fmt} row: {exc}.") from exc
        if fmt == "kto":
            example["label"] = bool(example["label"])
        example[GROUP] = prompt_group(example["prompt"])
        example[WHO] = contribution(fmt, row)
        out.append(example)
    return out


def contribution(fmt: str, row: dict[str, Any]) -> Contribution:
    """Who made an export row, from its metadata (nobody, for a file without it)."""
    meta = row.get("metadata")
    if not isinstance(meta, dict):
        return Contribution()
    people = meta.get("contributors")
    people = tuple(sorted({str(p) for p in people})) if isinstance(people, list) else ()
    first = meta.get("chosen") if fmt == "dpo" else meta
    generation_id = first.get("generation_id") if isinstance(first, dict) else None
    edit = meta.get("source") == "edit"
    return Contribution(
        contributors=people,
        editor=meta.get("editor") if edit else None,
        original_id=meta.get("original_id") if edit else None,
        generation_id=generation_id if isinstance(generation_id, int) else None,
    )


def _sft_example(row: dict[str, Any]) -> dict[str, Any]:
    messages = row["messages"]
    _check_messages(messages, "messages")
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise ValueError("messages must end with an assistant reply after a prompt")
    return {"prompt": messages[:-1], "completion": [messages[-1]]}


def _check_messages(messages: Any, name: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{name} must be a non-empty list of messages")
    for message in messages:
        if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            raise ValueError(f"each of {name} needs a string role and content")


def prompt_group(prompt: list[dict[str, str]]) -> str:
    """The key that keeps a prompt and all its takes on one side of the split."""
    canonical = json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def load_examples(files: Mapping[str, Path | str]) -> dict[str, list[dict[str, Any]]]:
    """Every given export file's examples, by format."""
    unknown = sorted(set(files) - set(FORMATS))
    if unknown:
        raise TuningError(f"Unknown export format {unknown[0]!r}: use one of {', '.join(FORMATS)}.")
    return {fmt: examples(fmt, read_jsonl(path), str(path)) for fmt, path in files.items()}


def count(loaded: Mapping[str, list[dict[str, Any]]]) -> DataCounts:
    kto = loaded.get("kto", [])
    desirable = sum(1 for e in kto if e["label"])
    return DataCounts(
        sft=len(loaded.get("sft", [])),
        dpo=len(loaded.get("dpo", [])),
        kto_desirable=desirable,
        kto_undesirable=len(kto) - desirable,
    )


def split(items: list[dict[str, Any]], eval_share: float = 0.1, seed: int = 0) -> Split:
    """Hold out about `eval_share` of the prompt groups (0: none), chosen by a seeded hash.

    The hash order, not a shuffle, decides, so a prompt stays on its side when the export
    grows. At least one group is held out when the share is positive and there are two
    groups, and at least one is always kept for training.
    """
    if not 0 <= eval_share < 1:
        raise TuningError(f"eval_share must be in [0, 1); got {eval_share}.")
    groups = sorted({e[GROUP] for e in items}, key=lambda g: _rank(g, seed))
    n_held = 0
    if eval_share > 0 and len(groups) > 1:
        n_held = min(max(1, round(len(groups) * eval_share)), len(groups) - 1)
    held_out = set(groups[:n_held])
    train = [_strip(e) for e in items if e[GROUP] not in held_out]
    held = [_strip(e) for e in items if e[GROUP] in held_out]
    counts = {
        "train": _split_counts(train, len(groups) - n_held),
        "eval": _split_counts(held, n_held),
    }
    trained_on = {
        person
        for e in items
        if e[GROUP] not in held_out and WHO in e
        for person in e[WHO].contributors
    }
    return Split(_shuffled(train, seed), held, counts, tuple(sorted(trained_on)))


def _rank(group: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def _shuffled(items: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """A seeded order: KTOTrainer reads its data in order (it pairs neighbours for its KL
    estimate), so the export's order (labels in runs) must not reach it."""
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def _strip(example: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in example.items() if k not in (GROUP, WHO)}


def _split_counts(items: list[dict[str, Any]], groups: int) -> SplitCounts:
    if items and "label" in items[0]:
        desirable = sum(1 for e in items if e["label"])
        return SplitCounts(len(items), groups, desirable, len(items) - desirable)
    return SplitCounts(len(items), groups)
