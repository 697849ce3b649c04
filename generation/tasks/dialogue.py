"""Dialogue output as plain `Name: line` lines for the named characters only."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from difflib import SequenceMatcher
from typing import Any

from generation.tasks.presets import Preset
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
    """Keep lines spoken by `characters`, as `Name: line`; a label that is a near miss of a name
    ("The Innkeep", "STRANGER (whispering)") counts as that character (see `_speaker`).
    Narration, other speakers and empty lines are dropped."""
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
    """The character a label names, or None. Tried in order, the first tier that names exactly
    one character wins: the same name (ignoring case, a leading article or title and any
    parenthetical: "The Innkeeper", "Stranger (whispering)"); one word of it ("Roland" for
    "Sir Roland"); a clear abbreviation, or the name followed by more words ("Innkeep" for
    "Innkeeper", "Innkeeper Greta"); then a near spelling (difflib ratio >= 0.8, same first
    letter, at least 4 letters) of the name or of one of its words."""
    if " ".join(label.split()) in characters:
        return " ".join(label.split())
    key = _name_key(label)
    if not key:
        return None
    names = [(name, _NameForms.of(name)) for name in characters]
    for tier in (_same, _one_word, _abbreviation):
        found = [(name, forms.full) for name, forms in names if tier(key, forms)]
        if len({full for _, full in found}) == 1:
            return found[0][0]
        if found:
            return None  # two different characters fit: it names neither
    scored = sorted(((_spelling(key, forms), name) for name, forms in names), reverse=True)
    best = [name for score, name in scored if score >= NEAR_MISS and score == scored[0][0]]
    return best[0] if len(best) == 1 else None


# A near-miss speaker label is kept when its similarity to a name (or one of the name's words
# of at least `_WORD_MIN` letters) reaches this difflib ratio: "Innkeep"/"innkeeper" 0.88,
# "Strnger"/"stranger" 0.93, while "Guard"/"Bard" is 0.67.
NEAR_MISS = 0.8
_WORD_MIN = 4
_ARTICLES = frozenset({"the", "a", "an"})
_TITLES = frozenset(
    {"sir", "dame", "lady", "lord", "mr", "mrs", "ms", "miss", "master", "mistress", "madam"}
    | {"dr", "doctor", "old", "young"}
)
_ASIDE = re.compile(r"\([^)]*\)?|\[[^\]]*\]?")
_EDGE = "\"'`_*~.,;!?-–—“”‘’«»"


@dataclass(frozen=True, slots=True)
class _NameForms:
    full: str  # "sir roland"
    core: str  # "roland": without leading articles and titles
    words: tuple[str, ...]  # ("sir", "roland") less articles

    @classmethod
    def of(cls, name: str) -> _NameForms:
        full = _name_key(name)
        words = tuple(word for word in full.split() if word not in _ARTICLES)
        return cls(full, _without_titles(full) or full, words)


def _name_key(text: str) -> str:
    """Case-folded, parentheticals removed, spaces collapsed, punctuation trimmed."""
    text = _ASIDE.sub(" ", text.casefold())
    return " ".join(word.strip(_EDGE) for word in text.split() if word.strip(_EDGE))


def _without_titles(key: str) -> str:
    words = key.split()
    while words and (words[0] in _ARTICLES or words[0] in _TITLES):
        words.pop(0)
    return " ".join(words)


def _keys(key: str) -> set[str]:
    return {key, _without_titles(key)} - {""}


def _same(key: str, forms: _NameForms) -> bool:
    return bool(_keys(key) & {forms.full, forms.core})


def _one_word(key: str, forms: _NameForms) -> bool:
    return any(len(k) >= 3 and k in forms.words for k in _keys(key))


def _abbreviation(key: str, forms: _NameForms) -> bool:
    for k in _keys(key):
        for target in {forms.full, forms.core}:
            if len(k) >= _WORD_MIN and target.startswith(k):
                return True
            if len(target) >= 3 and k.startswith(target + " "):
                return True
        if len(k) >= _WORD_MIN and any(w.startswith(k) for w in forms.words if len(w) > len(k)):
            return True
    return False


def _spelling(key: str, forms: _NameForms) -> float:
    targets = {forms.full, forms.core} | {w for w in forms.words if len(w) >= _WORD_MIN}
    scores = [
        SequenceMatcher(None, k, target).ratio()
        for k in _keys(key)
        for target in targets
        if len(k) >= _WORD_MIN and len(target) >= _WORD_MIN and k[0] == target[0]
    ]
    return max(scores, default=0.0)


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
