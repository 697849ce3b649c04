"""Splitting long text into Discord-sized messages, never inside a ``` code block."""

from __future__ import annotations

import re

LIMIT = 2000
_SENTENCE_END = re.compile(r"[.!?…](?=\s)")


def split_message(text: str, limit: int = LIMIT) -> list[str]:
    """`text` in pieces of at most `limit` characters, cut at a line break, else a sentence end,
    else a space. A cut never falls inside a code block: a block too long for one message is
    closed at the cut and reopened in the next piece."""
    if limit < 20:
        raise ValueError("limit must be at least 20 characters")
    pieces: list[str] = []
    rest = text.strip("\n")
    while len(rest) > limit:
        cut = _cut_point(rest, limit)
        head, tail = rest[:cut].rstrip(), rest[cut:]
        if _open_fence(head):  # inside code only the break itself goes: indentation stays
            head, rest = _close_block(head, tail[1:] if tail[:1] in ("\n", " ") else tail, limit)
        else:
            rest = tail.lstrip("\n ")
        pieces.append(head)
    if rest.strip():
        pieces.append(rest)
    return pieces or [""]


def _cut_point(text: str, limit: int) -> int:
    """The best place to cut `text[:limit]`: outside code blocks, at the latest break."""
    window = text[:limit]
    blocks = _code_spans(text)
    for finder in (_line_breaks, _sentence_ends, _spaces):
        for pos in sorted(finder(window), reverse=True):
            if pos > limit // 4 and not any(start < pos < end for start, end in blocks):
                return pos
    # Only the inside of a code block is left: cut at its last line break (else space) that
    # leaves room for the closing fence, so no line or word of code is broken.
    for finder in (_line_breaks, _spaces):
        inside = [pos for pos in finder(window[: limit - 4]) if pos > limit // 4]
        if inside:
            return max(inside)
    return limit


def _line_breaks(window: str) -> list[int]:
    return [m.start() for m in re.finditer("\n", window)]


def _sentence_ends(window: str) -> list[int]:
    return [m.end() for m in _SENTENCE_END.finditer(window)]


def _spaces(window: str) -> list[int]:
    return [m.start() for m in re.finditer(" ", window)]


def _code_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each ``` block; an unclosed one runs to the end."""
    fences = [m.start() for m in re.finditer("```", text)]
    spans = []
    for i in range(0, len(fences), 2):
        end = fences[i + 1] + 3 if i + 1 < len(fences) else len(text) + 1
        spans.append((fences[i], end))
    return spans


def _open_fence(text: str) -> str | None:
    """The opening fence line (```lang) if `text` ends inside a code block."""
    fences = list(re.finditer(r"```", text))
    if len(fences) % 2 == 0:
        return None
    # A language tag is a short word alone on the fence line ("```python\n"); anything else
    # after the fence is code, and must not be repeated when the block is reopened.
    tag = re.match(r"```([\w+#.-]{1,20})\n", text[fences[-1].start() :])
    return "```" + (tag.group(1) if tag else "")


def _close_block(head: str, rest: str, limit: int) -> tuple[str, str]:
    """Close the code block a forced cut fell into, and reopen it in the rest."""
    # The reopening fence keeps a short language tag only: "```" and a 6,000-letter word
    # must not come back whole in every piece (the split would never end).
    fence = (_open_fence(head) or "```")[: max(3, limit // 4)]
    if len(head) + 4 > limit:
        rest = head[limit - 4 :] + rest
        head = head[: limit - 4]
    return head + "\n```", fence + "\n" + rest
