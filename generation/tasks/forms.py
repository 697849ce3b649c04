"""Labelled forms (a game character's "Name: …", "Look: …"; a quest's "Giver: …"): the finished
text keeps one line per label, in the preset's order. A small model adds stray lines or repeats
a label; those go, as narration goes from dialogue. While a form is written, the engine asks
`form_turn` after each token: it writes the next label itself, and ends the form once every
label has its line."""

from __future__ import annotations

import re

from generation.types import FinishReason

_LABEL = re.compile(r"^\s*(?:[-*•]\s*)?\**\s*([^:*\n]{1,30}?)\s*\**\s*:\s*\**\s*(.*)$")


def normalise_form(text: str, labels: tuple[str, ...]) -> str:
    """`Label: value` lines for `labels`, the first of each, in order; labels the text lacks
    are left out (never invented). An unlabelled line right after a labelled one fills the next
    label when the text has no line of that label (the model wrote it and dropped its label).
    A text with none of the labels is kept as it is."""
    wanted = {label.casefold(): label for label in labels}
    rows: list[tuple[str | None, str]] = []  # (label or None, value) of each non-blank line
    for line in text.splitlines():
        match = _LABEL.match(line)
        label = wanted.get(match[1].strip().casefold()) if match else None
        value = " ".join((match[2] if label else line).replace("**", "").split())
        if value:
            rows.append((label, value))
    labelled = {label for label, _ in rows if label is not None}
    found: dict[str, str] = {}
    following: str | None = None  # the label an unlabelled line would fill
    for label, value in rows:
        if label is None and following not in labelled:
            label = following
        following = None
        if label is not None and label not in found:
            found[label] = value
            at = labels.index(label)
            following = labels[at + 1] if at + 1 < len(labels) else None
    if not found:
        return text.strip()
    return "\n".join(f"{label}: {found[label]}" for label in labels if label in found)


def next_form_line(text: str, labels: tuple[str, ...]) -> str | None:
    """What a labelled form being written needs after `text`: None while its last line is
    still open; once it ends with a newline, the next label to write (`"Twist:"`), or `""`
    when every label already has its line (the form is done)."""
    if not text.endswith("\n"):
        return None
    wanted = [label.casefold() for label in labels]
    last = -1  # the furthest label written so far
    for line in text.splitlines():
        match = _LABEL.match(line)
        if match and match[1].strip().casefold() in wanted:
            last = max(last, wanted.index(match[1].strip().casefold()))
    return f"{labels[last + 1]}:" if last + 1 < len(labels) else ""


def form_turn(text: str, labels: tuple[str, ...]) -> tuple[str, FinishReason | None]:
    """The labelled-form rule after each token of `text`: the label the engine writes next,
    its tokens forced rather than sampled ("" for none), and why the text ends (None while it
    goes on): "stop" once every label has its line, as what would follow is stray text."""
    label = next_form_line(text, labels)
    if label == "":
        return "", "stop"
    return label or "", None
