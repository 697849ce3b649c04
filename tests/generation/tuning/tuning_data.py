"""Small export files in `muse export`'s shapes, for the tuning tests."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SYSTEM = "You are Muse, a friendly assistant in a Discord server."
MARKER = "Verily,"
ASKS = (
    "Tell me about {}.",
    "What do you think of {}?",
    "Give me one fact about {}.",
    "Describe {} in a sentence.",
    "Why do people like {}?",
)
TOPICS = (
    "the moon", "cats", "rain", "coffee", "chess", "trains", "autumn", "bread", "the ocean",
    "owls", "jazz", "mountains", "libraries", "bicycles", "tea", "snow", "gardens", "clocks",
    "rivers", "candles", "maps", "violins", "deserts", "honey", "lighthouses", "kites",
    "puzzles", "foxes", "thunder", "museums",
)  # fmt: skip
REPLIES = (
    "{} is a fine thing to wonder about, friend.",
    "I could speak of {} for hours.",
    "many a poet has sung of {}.",
    "{} brings joy to those who notice it.",
)
HELD_OUT_TOPICS = (
    "the sun", "dogs", "wind", "chocolate", "poetry", "boats", "winter", "cheese", "forests",
    "bees", "drums", "islands", "castles", "stars", "apples", "volcanoes",
)  # fmt: skip


def chat(user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def reply(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


MEMBERS = 10  # rows come from ten members in turn: the data rules (max share, min
# contributors) let every row through


def member(n: int) -> str:
    """The pseudonym of the member behind row n."""
    return f"member{n % MEMBERS:02d}"


def meta(n: int, score: int = 1) -> dict[str, Any]:
    return {
        "generation_id": n, "task": "chat", "model": "test", "params": {}, "score": score,
        "contributors": [member(n)],
    }  # fmt: skip


def marker_rows() -> list[dict[str, Any]]:
    """30 sft rows whose replies all begin with MARKER, over varied short prompts."""
    rows = []
    for n, topic in enumerate(TOPICS):
        user = ASKS[n % len(ASKS)].format(topic)
        answer = f"{MARKER} {REPLIES[n % len(REPLIES)].format(topic)}"
        rows.append({"messages": [*chat(user), reply(answer)], "metadata": meta(n)})
    return rows


def held_out_prompts() -> list[list[dict[str, str]]]:
    """16 prompts like the marker rows' on topics they never mention."""
    return [chat(ASKS[n % len(ASKS)].format(t)) for n, t in enumerate(HELD_OUT_TOPICS)]


def dpo_rows(n: int = 16) -> list[dict[str, Any]]:
    """Pairs preferring a short friendly reply to a curt one; two pairs share each prompt
    (with different texts: identical ones would count once)."""
    rows = []
    for i in range(n):
        topic = TOPICS[i // 2]
        greeting = "Glad you asked!" if i % 2 else "Happy to help!"
        rows.append(
            {
                "prompt": chat(ASKS[(i // 2) % len(ASKS)].format(topic)),
                "chosen": [reply(f"{greeting} {topic.capitalize()} is lovely.")],
                "rejected": [reply("No." if i % 2 else "Ask someone else.")],
                "metadata": {
                    "source": "takes",
                    "margin": 1,
                    "task": "chat",
                    "model": "test",
                    "contributors": [member(i)],
                },  # fmt: skip
            }
        )
    return rows


def kto_rows(n: int = 20, good_share: float = 0.6) -> list[dict[str, Any]]:
    """Unpaired rated replies, good ones friendly and bad ones curt (good first, as exported)."""
    good = round(n * good_share)
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        label = i < good
        text = f"Happy to help! {topic.capitalize()} is lovely." if label else "No."
        rows.append(
            {
                "prompt": chat(ASKS[i % len(ASKS)].format(topic)),
                "completion": [reply(text)],
                "label": label,
                "metadata": meta(i, 1 if label else -1),
            }
        )
    return rows


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path
