"""Finishing a generation: the stored text, its status, and what the front end shows."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from bot.core.app import Muse
from bot.core.errors import storage_problem
from bot.core.plans import Plan
from bot.core.policy import blocked_by
from generation.tasks.presets import DIALOGUE, TEXT
from generation.tasks.task_rules import finish_text
from generation.types import GenerationChunk

log = logging.getLogger("muse.bot.core.settle")

STATUS_BY_REASON = {"stop": "done", "length": "done", "cancelled": "cancelled"}
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*(?=\s|$)")


def last_full_sentence(text: str) -> str:
    """`text` up to its last sentence end; unchanged when it has none (better a cut sentence
    than nothing)."""
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()].rstrip() if ends else text


@dataclass(frozen=True, slots=True)
class Settled:
    """A finished generation as stored, for the front end to show."""

    generation_id: int | None  # None: it could not be recorded (see `unsaved`)
    task: str
    output: str  # the text as stored and shown ("" when withheld)
    last: GenerationChunk
    ending: str | None  # why it ended: the finish reason, or "interrupted"
    withheld: str | None = None  # the blocklist rule the output hit
    unsaved: str | None = None  # what is wrong with the database, when it was not saved
    persona: str | None = None  # the channel persona it was written as
    kind: str = TEXT  # its task's kind: how it is shown and which buttons it carries

    @property
    def rateable(self) -> bool:
        """Whether buttons belong on it (its row exists)."""
        return self.generation_id is not None

    @property
    def cut(self) -> bool:
        """Whether the token limit cut it (▶ Continue writes on)."""
        return self.ending == "length"


async def settle(
    app: Muse,
    plan: Plan,
    generation_id: int | None,
    last: GenerationChunk,
    unsaved: str | None = None,
) -> Settled:
    """Store the finished row. An output that hits the guild's blocklist is withheld: not
    stored, not shown, the row `failed` with the rule. A text cut off by a shutdown is
    `interrupted`. A database that cannot be written is reported in `unsaved`."""
    run = app.active.get(generation_id) if generation_id is not None else None
    cut = run is not None and run.interrupted and last.finish_reason == "cancelled"
    preset = app.presets[plan.task]
    output = finish_text(preset, plan.shown_fields, last.text)
    # A cut dialogue keeps its whole lines (the rules dropped the unfinished one), a labelled
    # form its labelled lines; other text ends at its last full sentence.
    if last.finish_reason == "length" and preset.kind != DIALOGUE and not preset.labels:
        output = last_full_sentence(output)
    status = "interrupted" if cut else STATUS_BY_REASON.get(last.finish_reason or "", "failed")
    error = last.error
    rule = blocked_by(plan.blocklist, output) or blocked_by(plan.blocklist, last.text)
    if rule is not None:
        output, status, error = "", "failed", f"withheld: the output matched the blocklist {rule!r}"
    ending = "interrupted" if cut else last.finish_reason
    if generation_id is not None:
        try:
            await app.store.finish_generation(
                generation_id,
                output,
                last.finish_reason or "error",
                last.tokens_in,
                last.tokens_out,
                last.ttft_ms,
                last.total_ms or 0.0,
                status=status,
                error=error,
            )
        except Exception as exc:
            unsaved = storage_problem(exc)
            if unsaved is None:
                raise
            log.error("could not store generation %s (%s): %s", generation_id, unsaved, exc)
    return Settled(
        generation_id, plan.task, output, last, ending, rule, unsaved, plan.persona, preset.kind
    )
