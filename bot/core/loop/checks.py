"""The check a freshly tuned adapter passes before it enters the arena: its held-out loss
improved, and its texts on fixed probe prompts are not degenerate (empty, or one phrase over
and over)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

#: Prompts every adapter answers before it may battle: varied, short, task-neutral.
PROBES = (
    "Write one sentence about the sea.",
    "Describe a quiet village in two sentences.",
    "Give a short piece of advice to a new adventurer.",
)
PROBE_TOKENS = 48
MIN_WORDS = 3
#: A text whose most frequent three-word phrase fills this share of it is one phrase repeated.
REPEAT_SHARE = 0.5


def degenerate(text: str) -> str | None:
    """Why `text` is degenerate (empty, or one phrase repeated), or None when it is not."""
    words = text.split()
    if len(words) < MIN_WORDS:
        return "it wrote (almost) nothing"
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if len(grams) >= 4:
        phrase, times = Counter(grams).most_common(1)[0]
        if times * 3 / len(words) >= REPEAT_SHARE and times > 2:
            return f"it repeats {' '.join(phrase)!r} over and over"
    if len(set(words)) == 1:
        return f"it repeats {words[0]!r} over and over"
    return None


def loss_verdict(metrics: Mapping[str, Any]) -> str | None:
    """Why the held-out metrics do not show an improvement, or None when they do."""
    before = (metrics.get("before") or {}).get("loss")
    after = (metrics.get("after") or {}).get("loss")
    if not isinstance(before, int | float) or not isinstance(after, int | float):
        return "it has no held-out loss to judge it by"
    if not after < before:
        return f"its held-out loss did not improve ({before:.4f} → {after:.4f})"
    return None
