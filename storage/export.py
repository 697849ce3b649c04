"""Streaming JSONL exports (sft, dpo, kto, raw) in constant memory.

Rows come from a read-only connection in one snapshot, one cursor row at a time (never
`fetchall`). sft, kto and dpo rows go through the pure builders of `storage.export_rows`; raw
rows are assembled by SQLite (`export_sql.RAW_ROWS`). dpo pairs come from /compare votes (net
votes per pair decide; a tie gives nothing), from takes of one prompt (a generation and its
regenerations: same root, same messages) whose scores differ, and from edits; only the ids of
compared pairs are held in memory, to skip their duplicates among the others.

Edits (a member's corrected text, `source` "edit") are human-written targets. The editor's
preference for the edit counts as one good vote, so an edit is used unless the raters rated it
down (score >= 0), and never as a negative: sft keeps it as a row; kto as a row with label
true; dpo as a row with the edit chosen over its original (when the original is exportable),
margin 1 + edit score - original score, at least 1. Edits never pair up as takes.

Never exported: deleted generations; generations of users who opted out (as requester, as
owner of the root prompt, or of the conversation; for an edit also as requester of what it
edits); ratings by opted-out users. Forgotten users are no longer in the database. sft, dpo and
kto use `done` generations only; raw has every status but `deleted`. `min_score` N is how
strong a signal must be: sft keeps score >= N (and > 0), kto |score| >= N (and != 0), an edit
(in sft and kto) score + 1 >= N, dpo a margin (score difference, net votes, or edit margin)
>= N, and raw score >= N.

`include_self` False (what `muse tune` asks): a requester's own ratings and a voter's votes on
a pair holding their own take do not count, so no one promotes their own texts into training.
Every training row's metadata names its contributors (pseudonyms): the requester, an edit's
editor, and the raters or voters whose verdicts counted for it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TextIO

from storage import export_sql as sql
from storage.copy import sqlite_snapshot
from storage.db import connect_readonly
from storage.export_rows import (
    ExportGeneration,
    Pseudonyms,
    comparison_outcome,
    dpo_row,
    edit_margin,
    kto_row,
    sft_row,
    take_pairs,
)

log = logging.getLogger("muse.storage.export")

FORMATS = ("sft", "dpo", "kto", "raw")


@dataclass(frozen=True, slots=True)
class ExportFilters:
    """Which generations to consider."""

    min_score: int | None = None
    since: date | None = None
    guild_id: int | None = None
    task: str | None = None
    include_self: bool = True  # False: requesters' own ratings and votes do not count


def export_jsonl(
    db_path: Path | str, fmt: str, out: TextIO, filters: ExportFilters, *, progress: bool = False
) -> int:
    """Write the export to `out`, one JSON object per line; returns the number of rows.

    A PostgreSQL database is exported from its snapshot copied into a temporary SQLite file
    (`copy.sqlite_snapshot`: a server-side cursor, constant memory): the exports' SQL is
    SQLite's (its JSON functions and the pseudonym functions registered in Python), one text
    rather than two of about 200 lines each."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if isinstance(db_path, str):
        with sqlite_snapshot(db_path) as snapshot:
            return _export_file(snapshot, fmt, out, filters, progress=progress)
    return _export_file(db_path, fmt, out, filters, progress=progress)


def _export_file(
    db_path: Path, fmt: str, out: TextIO, filters: ExportFilters, *, progress: bool
) -> int:
    conn = connect_readonly(db_path)
    try:
        conn.execute("BEGIN")  # one snapshot for the whole export
        salt = conn.execute("SELECT value FROM meta WHERE key = 'export_salt'").fetchone()[0]
        pseudonyms = Pseudonyms(salt)
        conn.create_function("pseudonym", 1, pseudonyms.of, deterministic=True)
        conn.create_function("pseudonym_id", 2, pseudonyms.id_of, deterministic=True)
        exporter = _Exporter(conn, pseudonyms, filters)
        last_id = conn.execute("SELECT COALESCE(MAX(id), 0) FROM generations").fetchone()[0]
        meter = _Progress(fmt, last_id, enabled=progress)
        written = 0
        for line in getattr(exporter, fmt)():
            out.write(line)
            out.write("\n")
            written += 1
            meter.tick(written, exporter.position)
        meter.done(written)
        conn.execute("COMMIT")
    finally:
        conn.close()
    log.info("exported %d %s rows", written, fmt)
    return written


# An edit is a member's corrected text: its editor's preference counts as one good vote. It is
# kept unless rated down, and with `min_score` N when that vote and its score reach N.
_EDIT_KEPT = "score >= 0 AND (:min_score IS NULL OR score + 1 >= :min_score)"

_dumps = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode


class _Exporter:
    """One method per format, each yielding JSON lines (without the newline)."""

    def __init__(self, conn: sqlite3.Connection, pseudonyms: Pseudonyms, f: ExportFilters):
        self._conn = conn
        self._pseudonyms = pseudonyms
        self.position = 0  # the generation id (or root id) reached: rows come in id order
        self._min = f.min_score
        self._params: dict[str, Any] = {
            "since": f.since.isoformat() if f.since else None,
            "guild_id": f.guild_id,
            "task": f.task,
            "include_self": f.include_self,
        }

    def _generation(self, row: tuple[Any, ...]) -> ExportGeneration:
        """Columns in `sql.BASE_COLUMNS` order first, score and self_vote last."""
        return ExportGeneration(
            id=row[0],
            root_id=row[1],
            user=self._pseudonyms.of(row[2]),
            task=row[3],
            model_id=row[4],
            model_revision=row[5],
            params=json.loads(row[6]),
            messages=json.loads(row[7]),
            output=row[8] or "",
            created_utc=row[9],
            source=row[10],
            parent_id=row[11],
            requester=row[12],
            raters=tuple(json.loads(row[13])),
            score=row[-2],
            self_vote=bool(row[-1]),
        )

    def _scored(
        self, where: str, condition: str, order: str = "id", **params: Any
    ) -> sqlite3.Cursor:
        """Eligible generations plus `where`, then `condition` on the score; a cursor."""
        query = sql.scored(where, condition, order)
        return self._conn.execute(query, {**self._params, "min_score": self._min, **params})

    def sft(self) -> Iterator[str]:
        condition = f"""CASE WHEN source = 'edit' THEN {_EDIT_KEPT}
            ELSE score > 0 AND (:min_score IS NULL OR score >= :min_score) END"""
        for row in self._scored(sql.TRAINING, condition):
            self.position = row[0]
            yield _dumps(sft_row(self._generation(row)))

    def kto(self) -> Iterator[str]:
        condition = f"""CASE WHEN source = 'edit' THEN {_EDIT_KEPT}
            ELSE score != 0 AND (:min_score IS NULL OR abs(score) >= :min_score) END"""
        for row in self._scored(sql.TRAINING, condition):
            self.position = row[0]
            yield _dumps(kto_row(self._generation(row)))

    def dpo(self) -> Iterator[str]:
        """Comparison votes first, then takes of one prompt with different scores, then edits
        over their originals. Edits are no takes: an edit shares its original's prompt, and
        its score (other raters only) could rank it below the reply it corrects."""
        min_margin = max(self._min or 1, 1)
        seen: set[frozenset[int]] = set()
        votes = self._conn.execute(sql.COMPARISON_VOTES, self._params)
        for a_id, b_id, votes_a, votes_b, self_vote, voters in votes:
            outcome = comparison_outcome(votes_a, votes_b)
            if outcome is None or outcome[1] < min_margin:
                continue
            pair = self._pair(a_id, b_id)
            if pair is None:
                continue
            a, b = pair
            chosen, rejected = (a, b) if outcome[0] == "A" else (b, a)
            seen.add(frozenset((a_id, b_id)))
            row = dpo_row(
                chosen,
                rejected,
                source="comparison",
                margin=outcome[1],
                self_vote=bool(self_vote),
                voters=tuple(sorted(set(json.loads(voters)))),
            )
            yield _dumps(row)
        group: list[tuple[Any, ...]] = []  # rows of one root, decoded only when they pair up
        for row in self._scored(sql.TRAINING + sql.MODEL_ONLY, "1", order="root_id, id"):
            if group and group[0][1] != row[1]:
                self.position = row[1]
                yield from self._take_rows(group, min_margin, seen)
                group = []
            group.append(row)
        yield from self._take_rows(group, min_margin, seen)
        yield from self._edit_rows(min_margin, seen)

    def _edit_rows(self, min_margin: int, seen: set[frozenset[int]]) -> Iterator[str]:
        """Each edit not rated down, chosen over its original when that is exportable too."""
        for row in self._scored(sql.TRAINING + sql.EDITS_ONLY, "score >= 0"):
            edit = self._generation(row)
            original = self._original(edit.parent_id)
            if original is None or frozenset((edit.id, original.id)) in seen:
                continue
            margin = edit_margin(edit, original)
            if margin < min_margin:
                continue
            self_vote = edit.self_vote or original.self_vote
            yield _dumps(dpo_row(edit, original, source="edit", margin=margin, self_vote=self_vote))

    def _original(self, generation_id: int | None) -> ExportGeneration | None:
        """The generation an edit corrects, if it may be exported (filters aside: they apply
        to the edit, which shares its original's task)."""
        if generation_id is None:  # purged by retention
            return None
        query = sql.scored(sql.TRAINING + " AND g.id = :original", "1", "id")
        unfiltered = dict.fromkeys(("since", "guild_id", "task", "min_score"))
        params = {**unfiltered, "include_self": self._params["include_self"]}
        row = self._conn.execute(query, {**params, "original": generation_id}).fetchone()
        return None if row is None else self._generation(row)

    def _pair(self, a_id: int, b_id: int) -> tuple[ExportGeneration, ExportGeneration] | None:
        """Both generations of a comparison, if both are exportable with the same prompt."""
        takes = {}
        for row in self._scored(sql.TRAINING + " AND g.id IN (:a, :b)", "1", a=a_id, b=b_id):
            takes[row[0]] = self._generation(row)
        a, b = takes.get(a_id), takes.get(b_id)
        if a is None or b is None or a.messages != b.messages:
            return None
        return a, b

    def _take_rows(
        self, group: list[tuple[Any, ...]], min_margin: int, seen: set[frozenset[int]]
    ) -> Iterator[str]:
        scores = [row[-2] for row in group]
        if max(scores, default=0) - min(scores, default=0) < min_margin:
            return
        for chosen, rejected in take_pairs([self._generation(row) for row in group], min_margin):
            if frozenset((chosen.id, rejected.id)) in seen:
                continue
            row = dpo_row(
                chosen,
                rejected,
                source="takes",
                margin=chosen.score - rejected.score,
                self_vote=chosen.self_vote or rejected.self_vote,
            )
            yield _dumps(row)

    def raw(self) -> Iterator[str]:
        params = {**self._params, "min_score": self._min}
        for generation_id, line in self._conn.execute(sql.RAW_ROWS, params):
            self.position = generation_id
            yield line


class _Progress:
    """A progress bar on stderr, only when stderr is a terminal; rows come in id order, so
    the share of generation ids passed is the share of the work done."""

    def __init__(self, fmt: str, last_id: int, *, enabled: bool) -> None:
        self._fmt = fmt
        self._last_id = max(last_id, 1)
        self._enabled = enabled and sys.stderr.isatty()
        self._shown = 0.0

    def tick(self, written: int, position: int) -> None:
        if not self._enabled or written % 256:
            return
        now = time.monotonic()
        if now - self._shown >= 0.2:
            self._shown = now
            self._draw(min(position / self._last_id, 1.0), written)

    def done(self, written: int) -> None:
        if self._enabled:
            self._draw(1.0, written)
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _draw(self, share: float, written: int) -> None:
        bar = "#" * round(30 * share)
        sys.stderr.write(f"\r{self._fmt} [{bar:<30}] {share:4.0%} {written:,} rows")
        sys.stderr.flush()
