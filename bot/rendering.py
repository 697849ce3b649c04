"""Pure functions that turn generations into what Discord shows."""

from __future__ import annotations

import re

IN_PROGRESS = "▌"
_SPEAKER = re.compile(r"^([^:\n*]{1,40}):\s*(.*)$")


def render_dialogue(text: str) -> str:
    """`Name: line` lines as `**Name:** line`."""
    out = []
    for line in text.splitlines():
        match = _SPEAKER.match(line)
        out.append(f"**{match[1]}:** {match[2]}" if match else line)
    return "\n".join(out)


def render_output(task: str, text: str) -> str:
    """The finished text as shown in Discord."""
    return render_dialogue(text) if task == "dialogue" else text


def footer(model_id: str, tokens_out: int, total_ms: float | None) -> str:
    """`-# model · N tokens · S s · AI-generated`."""
    seconds = (total_ms or 0.0) / 1000
    name = model_id or "model"
    return f"-# {name} · {tokens_out} tokens · {seconds:.1f} s · AI-generated"


def queued(position: int) -> str:
    """The reply while the request waits for a slot."""
    return f"⏳ Queued — position {position}"


def in_progress(text: str, limit: int = 1900) -> str:
    """Partial text with the in-progress marker, trimmed to its last `limit` characters."""
    shown = text.strip()
    if len(shown) > limit:
        shown = "…" + shown[-limit:]
    return f"{shown} {IN_PROGRESS}" if shown else f"⏳ writing… {IN_PROGRESS}"


FINISH_NOTES = {
    "cancelled": "⏹ Stopped.",
    "timeout": "⌛ Timed out.",
    "error": "⚠️ Generation failed.",
}


def finish_note(reason: str | None) -> str:
    """A line saying why a text ended early (empty for a normal end)."""
    return FINISH_NOTES.get(reason or "", "")
