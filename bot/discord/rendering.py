"""Pure functions that turn generations into what Discord shows (its markdown)."""

from __future__ import annotations

import re

from bot.core import texts
from generation.tasks.presets import DIALOGUE
from storage.rows import Generation

IN_PROGRESS = "▌"
_SPEAKER = re.compile(r"^([^:\n*]{1,40}):\s*(.*)$")
_CODE = re.compile(r"```.*?```", re.DOTALL)  # closed blocks only: an unclosed one renders
_URL = r"https?://[^\s<>()]*(?:\([^\s<>()]*\)[^\s<>()]*)*"
_MASKED = re.compile(
    rf"\[(?P<label>[^\[\]\n]*)\]\(\s*<?\s*(?P<url>{_URL})\s*>?(?:\s+\"[^\"\n]*\")?\s*\)",
    re.IGNORECASE,
)
_LINK_START = re.compile(r"\]\((?=\s*<?\s*https?://)", re.IGNORECASE)


def show_links(text: str) -> str:
    """Masked links are shown with their URL: `[label](url)` becomes `label (<url>)`, so a
    generated text can never hide where a link goes (the `<>` also stop a preview embed).
    Any other `](http…` left over loses the `](` that would make it a link. Code blocks are
    kept as they are; inline `code` is not exempt (where its backticks pair up is Discord's
    parser's business, and a link wrongly taken for code would stay hidden)."""
    out, position = [], 0
    for code in _CODE.finditer(text):
        out += [unmask_links(text[position : code.start()]), code.group()]
        position = code.end()
    out.append(unmask_links(text[position:]))
    return "".join(out)


def unmask_links(text: str) -> str:
    """`show_links` without the exemption for code: for a text that will be cut, where a code
    block may lose its closing fence. No part of the result holds a masked link."""
    text = _MASKED.sub(lambda m: f"{m['label']} (<{m['url']}>)", text)
    return _LINK_START.sub("] (", text)


def render_dialogue(text: str) -> str:
    """`Name: line` lines as `**Name:** line`."""
    out = []
    for line in text.splitlines():
        match = _SPEAKER.match(line)
        out.append(f"**{match[1]}:** {match[2]}" if match else line)
    return "\n".join(out)


def render_output(kind: str, text: str) -> str:
    """The finished text of a task of `kind` as shown in Discord (a dialogue's speakers in
    bold, masked links shown with their URL)."""
    return show_links(render_dialogue(text) if kind == DIALOGUE else text)


def footer(
    model_id: str, tokens_out: int, total_ms: float | None, persona: str | None = None
) -> str:
    """`-# model · N tokens · S s · AI-generated` (small text)."""
    return f"-# {texts.footer(model_id, tokens_out, total_ms, persona)}"


def jump_link(generation: Generation) -> str | None:
    """https://discord.com/channels/<guild>/<channel>/<message>, when all three are known."""
    ids = (generation.guild_id, generation.channel_id, generation.message_id)
    return None if None in ids else "https://discord.com/channels/{}/{}/{}".format(*ids)


def queued(position: int) -> str:
    """The reply while the request waits for a slot."""
    return f"⏳ Queued — position {position}"


def in_progress(text: str, limit: int = 1900) -> str:
    """Partial text with the in-progress marker, trimmed to its last `limit` characters."""
    shown = show_links(text.strip())
    if len(shown) > limit:  # cut: a code block may lose its opening fence
        shown = "…" + unmask_links(text.strip())[-limit:]
    return f"{shown} {IN_PROGRESS}" if shown else f"⏳ writing… {IN_PROGRESS}"


def unsaved_note(problem: str) -> str:
    """The footer line of a text shown although the database could not store it."""
    return f"-# ⚠️ Not saved ({problem}): this text cannot be rated or exported."
