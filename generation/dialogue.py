"""Dialogue output as plain `Name: line` lines for the named characters only."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from generation.presets import Preset
from generation.types import GenerationRequest

TOKENS_PER_LINE = 32

# A speaker label: optional list marker or bold, the name, optional bold, then ':' or a dash.
_LABEL = re.compile(
    r"^\s*(?:[-*•>\d.)]+\s*)?\**\s*([^:*\n]{1,40}?)\s*\**\s*(?::|\s[-–—]\s)\s*\**\s*"
)


def parse_characters(text: str) -> list[str]:
    """`"Innkeeper, Stranger"` → `["Innkeeper", "Stranger"]` (blank and repeated names dropped)."""
    names = [" ".join(part.split()) for part in text.split(",")]
    return list(dict.fromkeys(name for name in names if name))


def normalise_dialogue(text: str, characters: list[str], max_lines: int | None = None) -> str:
    """Keep lines spoken by `characters` (matched case-insensitively, also by first name), as
    `Name: line`. Narration, unknown speakers and empty lines are dropped."""
    lines: list[str] = []
    for raw in text.splitlines():
        match = _LABEL.match(raw)
        speaker = _speaker(match.group(1), characters) if match else None
        if speaker:
            words = _clean(raw[match.end() :])
            if words:
                lines.append(f"{speaker}: {words}")
        # Anything else is narration or someone outside the scene: dropped. (A small model
        # wraps a spoken line far less often than it narrates, so unlabelled lines go too.)
    return "\n".join(lines[:max_lines] if max_lines else lines)


def _clean(words: str) -> str:
    return " ".join(words.replace("**", "").split()).strip()


def _speaker(label: str, characters: list[str]) -> str | None:
    """The character a label names: the same name, one word of it ("Roland" for "Sir Roland"),
    or a clear abbreviation ("Innkeep" for "Innkeeper")."""
    key = label.strip().casefold()
    for name in characters:
        full = name.casefold()
        if key == full or (len(key) >= 3 and key in full.split()):
            return name
        if len(key) >= 4 and (full.startswith(key) or key.startswith(full)):
            return name
    return None


def dialogue_request(preset: Preset, fields: dict[str, Any], **overrides: Any) -> GenerationRequest:
    """The dialogue preset's request, with the answer started by the first character's name
    (a small model then keeps to `Name: line`) and a token budget sized to the lines asked."""
    characters = parse_characters(str(fields.get("characters") or ""))
    request = preset.request(fields, **overrides)
    lines = int(preset.resolve(fields)["lines"])
    budget = request.max_new_tokens
    if overrides.get("max_new_tokens") is None:
        budget = min(budget, 16 + TOKENS_PER_LINE * lines)
    prefix = f"{characters[0]}:" if characters else ""
    return replace(request, response_prefix=prefix, max_new_tokens=budget)
