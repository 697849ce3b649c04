"""Pure builders of export rows in TRL's conversational formats; no SQL, no I/O.

    sft  {"messages": [system?, user, assistant], "metadata": {...}}
    dpo  {"prompt": [...], "chosen": [assistant], "rejected": [assistant], "metadata": {...}}
    kto  {"prompt": [...], "completion": [assistant], "label": bool, "metadata": {...}}

The prompt is always the stored messages: exactly what the model saw. (raw rows, every column
with the ratings nested, are assembled in SQL: see `export_sql.RAW_ROWS`.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

#: The kinds of Discord id that `Pseudonyms.id_of` hides. A thread is a channel (a message in a
#: thread has the thread as its channel), so thread ids are pseudonymised as channels.
ID_KINDS = frozenset({"guild", "channel", "message"})


class Pseudonyms:
    """Stable, salted pseudonyms for Discord ids, 16 hex digits of sha256.

    A user id is hashed as `salt:id`; any other id as `salt:kind:id` (kind in `ID_KINDS`), so
    ids of different kinds never share a pseudonym, not even a thread and the message that
    started it (Discord gives them the same id).
    """

    def __init__(self, salt: str) -> None:
        self._salt = salt.encode()
        self.of = lru_cache(maxsize=65_536)(self._compute)
        self._ids = lru_cache(maxsize=65_536)(self._compute_id)

    def _compute(self, user_id: int) -> str:
        return hashlib.sha256(self._salt + b":" + str(user_id).encode()).hexdigest()[:16]

    def id_of(self, kind: str, value: int | None) -> str | None:
        """The pseudonym of a guild, channel or message id; None stays None."""
        if kind not in ID_KINDS:
            raise ValueError(f"unknown kind of id {kind!r}")
        return None if value is None else self._ids(kind, value)

    def _compute_id(self, kind: str, value: int) -> str:
        text = f"{kind}:{value}".encode()
        return hashlib.sha256(self._salt + b":" + text).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ExportGeneration:
    """What the builders need of one generation (user ids already pseudonymised).

    `requester`: who asked for the text (for an edit, the requester of what it corrects; None
    once that was purged); `raters`: whose good or bad verdicts count in `score`.
    """

    id: int
    root_id: int
    user: str
    task: str
    model_id: str
    model_revision: str | None
    params: dict[str, Any]
    messages: list[dict[str, str]]
    output: str
    score: int
    self_vote: bool
    created_utc: str
    source: str = "model"  # or "edit"
    parent_id: int | None = None
    requester: str | None = None
    raters: tuple[str, ...] = ()

    @property
    def editor(self) -> str | None:
        """The member who wrote an edit (None for a model's text)."""
        return self.user if self.source == "edit" else None

    @property
    def original_id(self) -> int | None:
        """The generation an edit corrects (None for a model's text, or once purged)."""
        return self.parent_id if self.source == "edit" else None


def assistant(text: str) -> dict[str, str]:
    """The completion as a one-message conversation."""
    return {"role": "assistant", "content": text}


def contributors(g: ExportGeneration) -> list[str]:
    """Everyone whose part made the row: requester, editor and counted raters, sorted."""
    return sorted({g.requester, g.editor, *g.raters} - {None})  # type: ignore[arg-type]


def metadata(g: ExportGeneration) -> dict[str, Any]:
    """Where a row came from; the same keys in every format."""
    return {
        "generation_id": g.id,
        "task": g.task,
        "model": g.model_id,
        "model_revision": g.model_revision,
        "params": g.params,
        "score": g.score,
        "self_vote": g.self_vote,
        "user": g.user,
        "created_utc": g.created_utc,
        "source": g.source,
        "persona": g.params.get("persona"),
        "requester": g.requester,
        "editor": g.editor,
        "raters": list(g.raters),
        "contributors": contributors(g),
        "original_id": g.original_id,
    }


def sft_row(g: ExportGeneration) -> dict[str, Any]:
    """SFT: the prompt messages followed by the reply."""
    return {"messages": [*g.messages, assistant(g.output)], "metadata": metadata(g)}


def kto_row(g: ExportGeneration) -> dict[str, Any]:
    """KTO: unpaired; label is whether the score is positive. An edit is desirable (label
    true) unless rated down; the exporter leaves rated-down edits out."""
    return {
        "prompt": g.messages,
        "completion": [assistant(g.output)],
        "label": g.score >= 0 if g.source == "edit" else g.score > 0,
        "metadata": metadata(g),
    }


def dpo_row(
    chosen: ExportGeneration,
    rejected: ExportGeneration,
    *,
    source: str,
    margin: int,
    self_vote: bool,
    voters: tuple[str, ...] = (),
) -> dict[str, Any]:
    """DPO: one prompt, the preferred and the other reply. `source`: comparison, takes, or edit
    (a member's edit chosen over the reply it corrects); `voters`: a comparison's counted
    voters. Its contributors: both texts' and the voters."""
    everyone = sorted({*contributors(chosen), *contributors(rejected), *voters})
    edit = chosen if source == "edit" else None
    return {
        "prompt": chosen.messages,
        "chosen": [assistant(chosen.output)],
        "rejected": [assistant(rejected.output)],
        "metadata": {
            "source": source,
            "margin": margin,
            "self_vote": self_vote,
            "task": chosen.task,
            "model": chosen.model_id,
            "persona": chosen.params.get("persona"),
            "voters": list(voters),
            "contributors": everyone,
            "editor": edit.editor if edit else None,
            "original_id": edit.original_id if edit else None,
            "chosen": metadata(chosen),
            "rejected": metadata(rejected),
        },
    }


def edit_margin(edit: ExportGeneration, original: ExportGeneration) -> int:
    """How strongly an edit is preferred to its original: the editor's own preference (one
    vote) plus how much better the raters scored the edit, and never less than that one vote."""
    return max(1, 1 + edit.score - original.score)


def take_pairs(
    takes: Sequence[ExportGeneration], min_margin: int = 1
) -> Iterator[tuple[ExportGeneration, ExportGeneration]]:
    """(chosen, rejected) for every two takes of the same prompt whose scores differ by at
    least `min_margin`; takes must share a root. Deterministic: ordered by generation id."""
    by_prompt: dict[str, list[ExportGeneration]] = {}
    for take in sorted(takes, key=lambda t: t.id):
        by_prompt.setdefault(_prompt_key(take.messages), []).append(take)
    for group in by_prompt.values():
        for i, first in enumerate(group):
            for second in group[i + 1 :]:
                if abs(first.score - second.score) >= max(min_margin, 1):
                    yield (first, second) if first.score > second.score else (second, first)


def _prompt_key(messages: list[dict[str, str]]) -> str:
    return "\x00".join(f"{m['role']}\x01{m['content']}" for m in messages)


def comparison_outcome(votes_a: int, votes_b: int) -> tuple[str, int] | None:
    """('A' or 'B', margin) for the side with more votes; None for a tie overall."""
    if votes_a == votes_b:
        return None
    return ("A", votes_a - votes_b) if votes_a > votes_b else ("B", votes_b - votes_a)
