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


class Pseudonyms:
    """Stable, salted pseudonyms for Discord user ids: sha256(salt:id), 16 hex digits."""

    def __init__(self, salt: str) -> None:
        self._salt = salt.encode()
        self.of = lru_cache(maxsize=65_536)(self._compute)

    def _compute(self, user_id: int) -> str:
        return hashlib.sha256(self._salt + b":" + str(user_id).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ExportGeneration:
    """What the builders need of one generation (user id already pseudonymised)."""

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


def assistant(text: str) -> dict[str, str]:
    """The completion as a one-message conversation."""
    return {"role": "assistant", "content": text}


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
    }


def sft_row(g: ExportGeneration) -> dict[str, Any]:
    """SFT: the prompt messages followed by the reply."""
    return {"messages": [*g.messages, assistant(g.output)], "metadata": metadata(g)}


def kto_row(g: ExportGeneration) -> dict[str, Any]:
    """KTO: unpaired; label is whether the score is positive."""
    return {
        "prompt": g.messages,
        "completion": [assistant(g.output)],
        "label": g.score > 0,
        "metadata": metadata(g),
    }


def dpo_row(
    chosen: ExportGeneration,
    rejected: ExportGeneration,
    *,
    source: str,
    margin: int,
    self_vote: bool,
) -> dict[str, Any]:
    """DPO: one prompt, the preferred and the other reply. `source`: comparison or takes."""
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
            "chosen": metadata(chosen),
            "rejected": metadata(rejected),
        },
    }


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
