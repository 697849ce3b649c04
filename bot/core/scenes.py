"""Dialogue follow-ups (▶ Continue, 🔀 Branch) and the 📄 script, as pure functions."""

from __future__ import annotations

import json
from typing import Any

from generation.dialogue import parse_characters
from generation.presets import Preset
from generation.types import Message
from storage.models import Generation

CONTINUE = "Continue the scene with {lines} more lines of dialogue, in the same format."
BRANCH = "Write one different next line for this scene, in the same format."


def script_lines(output: str) -> list[tuple[str, str]]:
    """`Name: line` lines as (speaker, line) pairs."""
    pairs = []
    for raw in output.splitlines():
        name, sep, line = raw.partition(":")
        if sep and name.strip():
            pairs.append((name.strip(), line.strip()))
    return pairs


def next_speaker(characters: list[str], output: str) -> str:
    """The character after the last one who spoke (the first when nobody did)."""
    lines = script_lines(output)
    if not characters:
        return ""
    if not lines or lines[-1][0] not in characters:
        return characters[0]
    return characters[(characters.index(lines[-1][0]) + 1) % len(characters)]


def follow_up(
    parent: Generation, *, branch: bool
) -> tuple[dict[str, Any], tuple[Message, ...], str]:
    """(fields, messages, response prefix) that continue or branch `parent`'s scene."""
    fields = dict(parent.fields)
    lines = 1 if branch else int(fields.get("lines") or 6)
    fields["lines"] = lines
    ask = BRANCH if branch else CONTINUE.format(lines=lines)
    history = [Message(m["role"], m["content"]) for m in parent.messages]  # type: ignore[arg-type]
    messages = (*history, Message("assistant", parent.output or ""), Message("user", ask))
    speaker = next_speaker(
        parse_characters(str(fields.get("characters") or "")), parent.output or ""
    )
    return fields, messages, f"{speaker}:" if speaker else ""


def script_files(generation: Generation) -> tuple[str, str]:
    """(JSON, plain text) of a dialogue generation."""
    fields = generation.fields
    lines = script_lines(generation.output or "")
    data = {
        "generation_id": generation.id,
        "scene": fields.get("scene", ""),
        "characters": parse_characters(str(fields.get("characters") or "")),
        "tone": fields.get("tone", ""),
        "lines": [{"speaker": s, "line": t} for s, t in lines],
    }
    header = f"Scene: {data['scene']}\n\n"
    text = header + "\n".join(f"{s}: {t}" for s, t in lines) + "\n"
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n", text


def main_prompt(presets: dict[str, Preset], generation: Generation) -> str:
    """The generation's main field (what /compare's `prompt` filled)."""
    preset = presets.get(generation.task)
    key = preset.main_field if preset else "prompt"
    return str(generation.fields.get(key, ""))
