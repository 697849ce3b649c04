"""A task's request from its preset and fields: the one place the rules of a preset's kind live."""

from __future__ import annotations

from typing import Any

from generation.tasks.dialogue import dialogue_request, normalise_dialogue, parse_characters
from generation.tasks.forms import normalise_form
from generation.tasks.presets import DIALOGUE, Preset
from generation.types import GenerationRequest


def build_request(preset: Preset, fields: dict[str, Any], **overrides: Any) -> GenerationRequest:
    """The request for `preset` filled with `fields`; `overrides` (None = preset default) win."""
    if preset.kind == DIALOGUE:
        return dialogue_request(preset, fields, **overrides)
    return preset.request(fields, **overrides)


def finish_text(preset: Preset, fields: dict[str, Any], text: str) -> str:
    """The text as shown and stored: dialogue becomes `Name: line` lines of the named cast."""
    if preset.kind == DIALOGUE:
        resolved = preset.resolve(fields)
        return normalise_dialogue(
            text, parse_characters(resolved["characters"]), int(resolved["lines"])
        )
    labels = preset.labels_for(fields)
    if labels:
        return normalise_form(text, labels)
    return text.strip()
