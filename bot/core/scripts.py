"""A dialogue scene as files a game engine reads: JSON, plain text, Yarn Spinner 2 and ink.

Pure functions of a `Scene`. Every renderer first makes each speaker and line one line of text
(whitespace collapsed, control characters dropped) and leaves out lines with neither; the Yarn
and ink renderers then escape what their language would otherwise read as syntax, so that a
line always reaches the player as the words it was (tests/bot/script_grammar_*.py check that).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field

Line = tuple[str, str]  # (speaker, line)


@dataclass(frozen=True, slots=True)
class Scene:
    """The lines spoken so far, and the alternative next lines (each a branch of lines)."""

    title: str
    characters: list[str] = field(default_factory=list)
    tone: str = ""
    lines: list[Line] = field(default_factory=list)
    options: list[list[Line]] = field(default_factory=list)
    generation_id: int | None = None


def as_json(scene: Scene) -> str:
    """`generation_id`, `scene`, `characters`, `tone`, `lines` and `options` (a list of
    branches, each a list like `lines`)."""
    data = {
        "generation_id": scene.generation_id,
        "scene": scene.title,
        "characters": list(scene.characters),
        "tone": scene.tone,
        "lines": _json_lines(_clean(scene.lines)),
        "options": [_json_lines(branch) for branch in _options(scene)],
    }
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def as_text(scene: Scene) -> str:
    """`Scene: …`, a blank line, the `Name: line` lines, then any options numbered."""
    text = f"Scene: {one_line(scene.title)}\n\n" + "".join(
        _plain(pair) + "\n" for pair in _clean(scene.lines)
    )
    options = _options(scene)
    if options:
        text += "\nOptions:\n"
        for number, branch in enumerate(options, 1):
            marker = f"{number}. "
            for i, pair in enumerate(branch):
                text += (marker if i == 0 else " " * len(marker)) + _plain(pair) + "\n"
    return text


# --- Yarn Spinner 2 --------------------------------------------------------------------------

# Characters a Yarn line's text may escape with a backslash (YarnSpinnerLexer's
# TEXT_ESCAPED_CHARACTER), plus the markup brackets, which Yarn passes on as `\[` `\]` for its
# markup parser to read as plain brackets.
_YARN_ALWAYS = frozenset("\\#{}[]")
_YARN_DOUBLED = frozenset("</>")  # `<<` a command, `//` a comment, `>>` for symmetry
# What a body line may not start with even escaped (`->` an option, `===` the node's end,
# `=>` a line group in Yarn 3, a leading `\` read literally by Yarn 2.x's lexer).
_YARN_BAD_START = ("\\", "->", "=>", "===")
_YARN_LABEL_LEAD = "\\#{}[]<>/=- "
_GUARD = "\u00a0"  # a no-break space: text to Yarn's lexer, not the whitespace it skips


def as_yarn(scene: Scene) -> str:
    """One Yarn Spinner 2 node: `title:`, `---`, `Name: line` lines, each option as `-> Name:
    line` with its branch indented below it (the option's text, then what is said), `===`."""
    out = [f"// {one_line(label)}: {one_line(value)}" for label, value in _about(scene)]
    out += [f"title: {yarn_title(scene)}", "---"]
    out += _yarn_lines(scene.lines)
    for branch in filter(None, map(_yarn_lines, scene.options)):
        out.append("-> " + branch[0])
        out += ["    " + line for line in branch]
    out.append("===")
    return "\n".join(out) + "\n"


def yarn_title(scene: Scene) -> str:
    """A node name from the scene: ASCII letters, digits and underscores, starting with a
    letter ("a forge at dawn", 12 → `A_forge_at_dawn_12`)."""
    ascii_title = unicodedata.normalize("NFKD", scene.title).encode("ascii", "ignore").decode()
    words = re.findall(r"[A-Za-z0-9]+", ascii_title)[:6]
    name = "_".join(words)[:48].rstrip("_")
    if not name or not name[0].isalpha():
        name = "Scene" + (f"_{name}" if name else "")
    name = name[0].upper() + name[1:]
    return f"{name}_{scene.generation_id}" if scene.generation_id is not None else name


def yarn_speaker(name: str) -> str:
    """The speaker as Yarn names a line's character (the text before the line's first colon):
    one line, colons gone, no leading characters that Yarn would read as syntax."""
    return one_line(name.replace(":", " ")).lstrip(_YARN_LABEL_LEAD)


def _yarn_lines(lines: list[Line]) -> list[str]:
    return [text for text in map(_yarn_line, _clean(lines)) if text]  # "#:" says nothing


def _yarn_line(pair: Line) -> str:
    speaker, line = yarn_speaker(pair[0]), pair[1]
    text = _yarn_escape(f"{speaker}: {line}" if speaker else line).rstrip()
    return _GUARD + text if text.startswith(_YARN_BAD_START) else text


def _yarn_escape(text: str) -> str:
    out = []
    for i, char in enumerate(text):
        doubled = char in _YARN_DOUBLED and text[i + 1 : i + 2] == char
        out.append("\\" + char if char in _YARN_ALWAYS or doubled else char)
    return "".join(out)


# --- ink -------------------------------------------------------------------------------------

# Ends of ink's content text (`{ } | \ #`), choice brackets, `~` (logic where a line or a
# choice's text starts), and what starts a divert (`->`), a thread (`<-`), glue (`<>`) or a
# comment (`//`, `/*`); ink lets a backslash escape any character.
_INK_ALWAYS = frozenset("\\{}|#[]~")
_INK_PAIRS = frozenset({"->", "<-", "<>"})  # the first character is escaped
_INK_COMMENTS = frozenset({"//", "/*"})  # the second character is escaped
_INK_LINE_START = frozenset("*+-=")  # choices, gathers, knots and stitches
# Words that start a declaration, an include or a note. A line starting with one is escaped
# even when a longer word follows ("VARIABLE"): ink's identifiers stop at characters that
# Python counts as letters, and `INCLUDE` needs no word boundary at all.
_INK_KEYWORDS = ("VAR", "CONST", "LIST", "EXTERNAL", "INCLUDE", "TODO")


def as_ink(scene: Scene) -> str:
    """ink: `Name: line` lines; each option a choice `* [Name: line]` followed by its branch and
    `-> END`; without options the lines end `-> END`."""
    out = [f"// {one_line(label)}: {one_line(value)}" for label, value in _about(scene)]
    out += [_ink_line(pair) for pair in _clean(scene.lines)]
    options = _options(scene)
    for branch in options:
        out.append(f"* [{_ink_escape(_plain(branch[0]))}]")
        out += ["  " + _ink_line(pair) for pair in branch]
        out.append("  -> END")
    if not options:
        out.append("-> END")
    return "\n".join(out) + "\n"


def _ink_line(pair: Line) -> str:
    text = _ink_escape(_plain(pair))
    if text[:1] in _INK_LINE_START or text.startswith(_INK_KEYWORDS):
        text = "\\" + text  # `\*`, `\VAR`: content, not a choice or a declaration
    return text


def _ink_escape(text: str) -> str:
    out = []
    for i, char in enumerate(text):
        escape = (
            char in _INK_ALWAYS
            or text[i : i + 2] in _INK_PAIRS
            or (i > 0 and text[i - 1 : i + 1] in _INK_COMMENTS)
        )
        out.append("\\" + char if escape else char)
    return "".join(out)


# --- shared ----------------------------------------------------------------------------------


def one_line(text: str) -> str:
    """`text` on one line: whitespace runs become one space, control characters go."""
    kept = "".join(c for c in str(text) if c.isspace() or unicodedata.category(c) != "Cc")
    return " ".join(kept.split())


def _clean(lines: list[Line]) -> list[Line]:
    pairs = [(one_line(speaker), one_line(line)) for speaker, line in lines]
    return [(speaker, line) for speaker, line in pairs if speaker or line]


def _options(scene: Scene) -> list[list[Line]]:
    return [branch for branch in map(_clean, scene.options) if branch]


def _plain(pair: Line) -> str:
    speaker, line = pair
    return f"{speaker}: {line}".rstrip() if speaker else line


def _json_lines(lines: list[Line]) -> list[dict[str, str]]:
    return [{"speaker": speaker, "line": line} for speaker, line in lines]


def _about(scene: Scene) -> list[tuple[str, str]]:
    about = [("Scene", scene.title), ("Characters", ", ".join(scene.characters))]
    about.append(("Tone", scene.tone))
    return [(label, value) for label, value in about if one_line(value)]
