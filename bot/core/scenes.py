"""Dialogue follow-ups (▶ Continue, 🔀 Branch) and the 📄 script of a scene."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, Protocol

from bot.core import scripts
from bot.core.scripts import Scene
from generation.tasks.dialogue import parse_characters
from generation.tasks.presets import DIALOGUE, Preset, builtin_presets, kind_of
from generation.types import Message
from storage.rows import Generation

CONTINUE = "Continue the scene with {lines} more lines of dialogue, in the same format."
BRANCH = "Write one different next line for this scene, in the same format."
_CONTINUE = re.compile(re.escape(CONTINUE).replace(re.escape("{lines}"), r"\d+"))
DEFAULT_LINES = 6  # /dialogue's default: what ▶ asks for when nothing says otherwise
_MAX_DEPTH = 10_000  # ancestors followed at most (a parent chain is never this long)

FollowKind = Literal["continue", "branch"]


class SceneStore(Protocol):
    """What `scene_of` reads: `storage.Store`, or a test's fake."""

    async def get_generation(self, generation_id: int) -> Generation | None: ...

    async def children(self, generation_id: int) -> list[Generation]: ...


def follow_kind(
    generation: Generation, presets: Mapping[str, Preset] | None = None
) -> FollowKind | None:
    """What a generation of the dialogue kind (in `presets`, default the built-in ones) goes on
    from its parent with: ▶ "continue" or 🔀 "branch" (its last user message is that ask);
    None for anything else, a /dialogue included."""
    kind = kind_of(builtin_presets() if presets is None else presets, generation.task)
    if kind != DIALOGUE or generation.parent_id is None:
        return None
    asks = [m.get("content") for m in generation.messages if m.get("role") == "user"]
    if not asks:
        return None
    if asks[-1] == BRANCH:
        return "branch"
    return "continue" if _CONTINUE.fullmatch(str(asks[-1])) else None


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
    parent: Generation, *, branch: bool, default_lines: int = DEFAULT_LINES
) -> tuple[dict[str, Any], tuple[Message, ...], str]:
    """(fields, messages, response prefix) that continue or branch `parent`'s scene; ▶ asks
    for as many lines as the parent did (`default_lines`, its preset's default, if it did not
    say)."""
    fields = dict(parent.fields)
    lines = 1 if branch else int(fields.get("lines") or default_lines)
    fields["lines"] = lines
    ask = BRANCH if branch else CONTINUE.format(lines=lines)
    history = [Message(m["role"], m["content"]) for m in parent.messages]  # type: ignore[arg-type]
    messages = (*history, Message("assistant", parent.output or ""), Message("user", ask))
    speaker = next_speaker(
        parse_characters(str(fields.get("characters") or "")), parent.output or ""
    )
    return fields, messages, f"{speaker}:" if speaker else ""


async def scene_of(
    store: SceneStore, generation: Generation, presets: Mapping[str, Preset] | None = None
) -> Scene:
    """The scene up to `generation`: the lines of its lineage (the /dialogue, then each ▶ or 🔀
    that led here, in order, ending with its own), and as options the lines of its 🔀 children
    that finished (each one alternative next line). `presets` say which tasks are dialogues."""
    lineage, seen = [generation], {generation.id}
    while len(lineage) < _MAX_DEPTH and (before := await _followed(store, lineage[-1], presets)):
        if before.id in seen:
            break  # a damaged parent chain loops: stop rather than go round
        lineage.append(before)
        seen.add(before.id)
    start = lineage[-1]
    options = [
        script_lines(child.output or "")
        for child in await store.children(generation.id)
        if child.status == "done" and _follows(child, generation, presets) == "branch"
    ]
    return Scene(
        title=str(start.fields.get("scene") or ""),
        characters=parse_characters(str(start.fields.get("characters") or "")),
        tone=str(start.fields.get("tone") or ""),
        lines=[pair for step in reversed(lineage) for pair in script_lines(step.output or "")],
        options=[branch for branch in options if branch],
        generation_id=generation.id,
    )


async def scene_files(
    store: SceneStore, generation: Generation, presets: Mapping[str, Preset] | None = None
) -> list[tuple[str, str]]:
    """(file name, text) of the 📄 script: `scene-<id>.json`, `.txt`, `.yarn` and `.ink`."""
    scene = await scene_of(store, generation, presets)
    name = f"scene-{generation.id}"
    return [
        (f"{name}.json", scripts.as_json(scene)),
        (f"{name}.txt", scripts.as_text(scene)),
        (f"{name}.yarn", scripts.as_yarn(scene)),
        (f"{name}.ink", scripts.as_ink(scene)),
    ]


async def _followed(
    store: SceneStore, generation: Generation, presets: Mapping[str, Preset] | None
) -> Generation | None:
    """The generation whose lines `generation` goes on from: its parent for a ▶ or 🔀, past
    any 🔁 takes in between (a take repeats its parent's messages)."""
    if follow_kind(generation, presets) is None or generation.parent_id is None:
        return None
    parent = await store.get_generation(generation.parent_id)
    for _ in range(_MAX_DEPTH):
        if parent is None or parent.messages != generation.messages:
            return parent
        parent = await store.get_generation(parent.parent_id) if parent.parent_id else None
    return None


def _follows(
    child: Generation, parent: Generation, presets: Mapping[str, Preset] | None
) -> FollowKind | None:
    """How `child` goes on from `parent`'s lines (None for a 🔁 take of `parent`)."""
    return follow_kind(child, presets) if child.messages != parent.messages else None


def default_lines(presets: Mapping[str, Preset], task: str) -> int:
    """How many lines `task`'s preset writes when a request does not say."""
    preset = presets.get(task)
    default = preset.defaults.get("lines", "") if preset is not None else ""
    return int(default) if default.isdigit() else DEFAULT_LINES


def main_prompt(presets: Mapping[str, Preset], generation: Generation) -> str:
    """The generation's main field (what /compare's `prompt` filled)."""
    preset = presets.get(generation.task)
    key = preset.main_field if preset else "prompt"
    return str(generation.fields.get(key, ""))
