"""A checker for ink scripts, written from ink's parser (InkParser*.cs) and WritingWithInk.md.

No ink compiler installs from PyPI (`bink` is a runtime for compiled JSON), so the tests parse
the 📄 `.ink` file with this. Like ink it first removes comments (`//` to the end of the line,
`/* … */`) without regard to backslashes, then reads each line:

- `== knot ==` / `=== function f(x) ===` and `= stitch`: a new flow;
- `*` / `+` bullets (depth = how many): a choice: optional `(label)`, optional `{condition}`,
  then `start [choice-only] inner` content and an optional divert; a choice with neither text
  nor divert is rejected (ink would warn and make it an invisible fallback);
- `-` bullets (not `->`): a gather, optional `(label)`, optional content;
- `~ …` logic lines are rejected (this checker does not evaluate logic);
  `VAR`/`CONST name = …`, `LIST`, `EXTERNAL`; `TODO:` notes; a line starting `INCLUDE`
  (even `INCLUDEfoo`, as in ink) is rejected: one exported file includes nothing;
- anything else: content. Content text ends at `{ } | #` and at a line's end (a `~` where
  content starts, a choice's text included, is logic: rejected); `\\x` is the
  character x; `{…}` is inline logic (nested braces balanced); `#` starts tags; `<>` is glue;
  `->` a divert that must end the line (`->->` tunnels are not supported here); inside a choice
  `[` `]` mark the choice-only text. An unescaped `}` or `|` outside logic is an error, as in ink.

Then the weave (choices and gathers nested by depth) is built per flow and checked: every
divert names END, DONE, a knot, a stitch or a label; knot names are unique; and every path
through each flow ends in a divert — a choice's branch with no divert and no gather after it,
or a flow that just stops, is a loose end. (ink itself only warns about some of those; the
Muse renderer must not leave any.)

`plain_scene` is stricter: no knots, content lines of plain text, then at most one set of
choices `* [text]` whose branches are plain lines ending `-> END`, and `-> END` when there are
no choices. It returns the text a player would see.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# ink's identifier characters (InkParser's identifierCharSet and CharacterRanges): ASCII letters,
# digits and `_`, Latin Extended-A/B, Greek, Cyrillic, Armenian, Hebrew, Arabic and Hangul.
_ID_CHAR = (
    "A-Za-z0-9_\u0100-\u024f\u0370-\u0373\u0376\u0377\u0386\u0388-\u038a\u038c"
    "\u038e-\u03a1\u03a3-\u03ff\u0400-\u0481\u048a-\u04ff\u0531-\u0556\u0561-\u0587"
    "\u058f\u0590-\u05ff\u0600-\u06ff\uac00-\ud7af"
)
IDENTIFIER = re.compile(f"[{_ID_CHAR}]+")
_KNOT = re.compile(r"={2,}\s*(?:function\s+)?(\w+)\s*(?:\([^)]*\))?\s*=*\s*")
_STITCH = re.compile(r"=(?!=)\s*(\w+)\s*(?:\([^)]*\))?\s*")
_LABEL = re.compile(r"\s*\(\s*(\w+)\s*\)")
_DIVERT = re.compile(r"->\s*([^\W]\w*(?:\.[^\W]\w*)*)\s*")
_DECLARATION = re.compile(r"(?:VAR|CONST|LIST)\s+\w+\s*=\s*\S.*|EXTERNAL\s+\w+\s*\(.*\)\s*")
_KEYWORDS = frozenset({"VAR", "CONST", "LIST", "EXTERNAL", "INCLUDE"})
_ENDS = frozenset({"END", "DONE"})


class InkError(ValueError):
    """The script does not parse, or fails the weave's checks; says where."""

    def __init__(self, line_no: int, message: str) -> None:
        super().__init__(f"line {line_no}: {message}")
        self.line_no = line_no


@dataclass
class Content:
    """What a line (or part of a choice line) outputs: `text` with escapes resolved."""

    line_no: int
    text: str = ""
    logic: int = 0
    glue: bool = False
    tags: list[str] = field(default_factory=list)
    divert: str | None = None

    @property
    def plain(self) -> bool:
        return not (self.logic or self.glue or self.tags)


@dataclass
class Choice:
    line_no: int
    depth: int
    sticky: bool
    label: str | None
    condition: bool
    start: Content
    choice_only: Content | None
    inner: Content
    weave: Weave = field(default_factory=lambda: Weave([]))

    @property
    def shown(self) -> str:
        """The text offered to the player."""
        return (self.start.text + (self.choice_only.text if self.choice_only else "")).strip()

    @property
    def divert(self) -> str | None:
        return self.inner.divert or self.start.divert


@dataclass
class Gather:
    line_no: int
    depth: int
    label: str | None
    content: Content


@dataclass
class Weave:
    items: list[Content | Choice | Gather | str]  # a str: a declaration or a TODO note


@dataclass
class Flow:
    name: str  # "" for the story's top; "knot" or "knot.stitch"
    line_no: int
    weave: Weave


@dataclass
class Story:
    flows: list[Flow]


@dataclass
class PlainScene:
    lines: list[str]
    choices: list[tuple[str, list[str]]]  # (the choice's text, the lines after it)


def parse(source: str) -> Story:
    """The story's flows; raises `InkError` where ink would not compile it or a path stops."""
    rows = _without_comments(source.replace("\r\n", "\n").replace("\r", "\n")).split("\n")
    flows = [Flow("", 1, Weave([]))]
    knot = ""
    stack: list[Weave] = [flows[0].weave]  # the open weaves, outermost first
    for number, row in enumerate(rows, 1):
        text = row.strip(" \t")
        if not text:
            continue
        if knot_match := _KNOT.fullmatch(text):
            knot = knot_match.group(1)
            flows.append(Flow(knot, number, Weave([])))
            stack = [flows[-1].weave]
        elif text.startswith("=") and (stitch := _STITCH.fullmatch(text)):
            flows.append(
                Flow(f"{knot}.{stitch.group(1)}" if knot else stitch.group(1), number, Weave([]))
            )
            stack = [flows[-1].weave]
        elif text[0] == "=":
            raise InkError(number, f"not a knot or stitch: {text[:40]!r}")
        elif text[0] in "*+":
            choice = _choice(text, number)
            stack = _open_to(stack, choice.depth, number)
            stack[-1].items.append(choice)
            stack.append(choice.weave)
        elif text[0] == "-" and not text.startswith("->"):
            gather = _gather(text, number)
            stack = _open_to(stack, gather.depth, number)
            stack[-1].items.append(gather)
        elif text[0] == "~":
            raise InkError(number, "logic lines (`~`) are not supported here")
        elif text.startswith("INCLUDE"):  # ink reads `INCLUDEfoo` as an include too
            raise InkError(number, "INCLUDE is not supported in one exported file")
        elif (word := IDENTIFIER.match(text)) and word.group() == "TODO":
            stack[-1].items.append("todo")
        elif word and word.group() in _KEYWORDS:
            if not _DECLARATION.fullmatch(text):
                raise InkError(number, f"a bad or unsupported {word.group()} line")
            stack[-1].items.append("declaration")
        elif text.startswith("<-"):
            raise InkError(number, "threads (`<-`) are not supported here")
        else:
            stack[-1].items.append(_content(text, 0, number, in_choice=False)[0])
    story = Story(flows)
    for flow, after in zip(flows, [*flows[1:], None], strict=True):
        stitched = after is not None and after.name.startswith(f"{flow.name}.")
        if flow.name and "." not in flow.name and not flow.weave.items and not stitched:
            raise InkError(flow.line_no, f"the knot {flow.name!r} has no lines")
    _check_names(story)
    for flow in story.flows:
        if (flow.weave.items or not flow.name) and not _ends(flow.weave):
            raise InkError(flow.line_no, f"a loose end: {flow.name or 'the story'} runs out")
    return story


def plain_scene(source: str) -> PlainScene:
    """A Muse script: plain lines, then choices `* [text]` each with plain lines and `-> END`
    (or `-> END` after the lines when there are no choices). Raises `InkError` otherwise."""
    story = parse(source)
    if len(story.flows) != 1:
        raise InkError(1, "knots or stitches in a scene")
    items = story.flows[0].weave.items
    lines: list[str] = []
    choices: list[tuple[str, list[str]]] = []
    for index, item in enumerate(items):
        if isinstance(item, Content) and not choices:
            if item.divert is not None:
                if item.divert != "END" or index != len(items) - 1 or item.text.strip():
                    raise InkError(item.line_no, "only a last `-> END` may divert")
                continue
            lines.append(_plain(item))
        elif isinstance(item, Choice) and item.depth == 1:
            if item.start.text or item.inner.text or not item.shown or item.sticky:
                raise InkError(item.line_no, "a choice that is not `* [text]`")
            if item.label or item.condition or item.divert is not None:
                raise InkError(item.line_no, "a choice with a label, condition or divert")
            choices.append((_plain(item.choice_only) if item.choice_only else "", _branch(item)))
        else:
            raise InkError(getattr(item, "line_no", 1), f"not a plain line or choice: {item!r}")
    if not choices and not (items and isinstance(items[-1], Content) and items[-1].divert):
        raise InkError(len(source.split("\n")), "no `-> END`")
    return PlainScene(lines, choices)


def _branch(choice: Choice) -> list[str]:
    items = choice.weave.items
    if not items or not isinstance(items[-1], Content) or items[-1].divert != "END":
        raise InkError(choice.line_no, "a branch that does not end `-> END`")
    if items[-1].text.strip():
        raise InkError(items[-1].line_no, "text before the branch's `-> END`")
    body = items[:-1]
    if not all(isinstance(item, Content) and item.divert is None for item in body):
        raise InkError(choice.line_no, "a branch that is not only lines")
    return [_plain(item) for item in body if isinstance(item, Content)]


def _plain(content: Content) -> str:
    if not content.plain:
        raise InkError(content.line_no, f"not plain text: {content!r}")
    return " ".join(content.text.split())  # as ink's output cleans whitespace


# --- comments and lines -----------------------------------------------------------------------


def _without_comments(source: str) -> str:
    """ink's CommentEliminator: comments go, their newlines stay; backslashes do not matter."""
    out, i = [], 0
    while i < len(source):
        if source.startswith("//", i):
            end = source.find("\n", i)
            i = len(source) if end < 0 else end
        elif source.startswith("/*", i):
            end = source.find("*/", i + 2)
            if end < 0:
                raise InkError(source.count("\n", 0, i) + 1, "`/*` without `*/`")
            out.append("\n" * source.count("\n", i, end))
            i = end + 2
        else:
            out.append(source[i])
            i += 1
    return "".join(out)


def _bullets(text: str, marks: str) -> tuple[int, int]:
    """(depth, position after the bullets and the spaces between them)."""
    depth, pos = 0, 0
    while pos < len(text) and text[pos] in marks and not text.startswith("->", pos):
        depth += 1
        pos += 1
        while pos < len(text) and text[pos] in " \t":
            pos += 1
    return depth, pos


def _choice(text: str, line_no: int) -> Choice:
    depth, pos = _bullets(text, "*+")
    sticky = text[0] == "+"
    label = None
    if match := _LABEL.match(text, pos):
        label, pos = match.group(1), match.end()
    condition = False
    while True:
        while text[pos : pos + 1] in (" ", "\t"):
            pos += 1
        if text[pos : pos + 1] != "{":
            break
        pos = _logic(text, pos + 1, line_no)
        condition = True
    start, pos = _content(text, pos, line_no, in_choice=True)
    choice_only = None
    inner = Content(line_no)
    if text[pos : pos + 1] == "[" and start.divert is None:
        choice_only, pos = _content(text, pos + 1, line_no, in_choice=True)
        if text[pos : pos + 1] != "]" or choice_only.divert:
            raise InkError(line_no, "`[` without `]` in a choice")
        inner, pos = _content(text, pos + 1, line_no, in_choice=True)
    if pos < len(text):
        raise InkError(line_no, f"unexpected {text[pos : pos + 20]!r} in a choice")
    choice = Choice(line_no, depth, sticky, label, condition, start, choice_only, inner)
    if not choice.shown and choice.divert is None:
        raise InkError(line_no, "a choice without text")
    return choice


def _gather(text: str, line_no: int) -> Gather:
    depth, pos = _bullets(text, "-")
    label = None
    if match := _LABEL.match(text, pos):
        label, pos = match.group(1), match.end()
    content, _ = _content(text, pos, line_no, in_choice=False)
    return Gather(line_no, depth, label, content)


def _content(text: str, pos: int, line_no: int, *, in_choice: bool) -> tuple[Content, int]:
    """Mixed text and logic from `pos`; stops at the line's end, or at `[`/`]` in a choice.
    After a `#` the characters go to tags, which are read like the rest of the content."""
    content = Content(line_no)
    out: list[str] = []
    target = out
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            target.append(text[pos + 1 : pos + 2])  # a backslash at the end escapes nothing
            pos += 2
        elif char == "{":
            pos = _logic(text, pos + 1, line_no)
            content.logic += 1
        elif char == "~" and not "".join(out).strip() and not content.logic:
            raise InkError(line_no, "a `~` where content starts is logic, not text")
        elif char in "}|":
            raise InkError(line_no, f"expected end of line but saw {text[pos : pos + 20]!r}")
        elif char == "#":
            content.tags.append("")
            target = []
            pos += 1
        elif text.startswith("<>", pos):
            content.glue = True
            pos += 2
        elif text.startswith("<-", pos):
            raise InkError(line_no, "a thread (`<-`) inside a line")
        elif text.startswith("->", pos):
            if text.startswith("->->", pos) or text.startswith("->", pos + 2):
                raise InkError(line_no, "tunnels (`->->`) are not supported here")
            match = _DIVERT.match(text, pos)
            if not match:
                raise InkError(line_no, "`->` with no target")
            content.divert = match.group(1)
            pos = match.end()
            if pos < len(text) and text[pos] != "#":
                raise InkError(line_no, f"expected end of line after a divert: {text[pos:]!r}")
        elif in_choice and char in "[]":
            break
        else:
            target.append(char)
            pos += 1
        if target is not out and content.tags:
            content.tags[-1] = "".join(target).strip()
    content.text = "".join(out)
    return content, pos


def _logic(text: str, pos: int, line_no: int) -> int:
    """From just inside `{` to just after its `}` (braces nest, strings and escapes count)."""
    depth, start = 1, pos
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            pos += 2
            continue
        if char == '"':
            end = text.find('"', pos + 1)
            if end < 0:
                raise InkError(line_no, 'a string without its closing `"`')
            pos = end + 1
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                if not text[start:pos].strip():
                    raise InkError(line_no, "empty `{}`")
                return pos + 1
        pos += 1
    raise InkError(line_no, "`{` without `}`")


# --- the weave ---------------------------------------------------------------------------------


def _open_to(stack: list[Weave], depth: int, line_no: int) -> list[Weave]:
    """The open weaves for a choice or gather of `depth` (1 = the flow's own weave)."""
    if depth > len(stack):
        raise InkError(
            line_no, f"a depth-{depth} choice or gather without a depth-{depth - 1} choice"
        )
    return stack[:depth]


def _ends(weave: Weave) -> bool:
    """Whether every path through the weave reaches a divert. Sections run from one gather to
    the next; a section ends the weave if it diverts before its choices, or if it has choices
    and every one of their branches ends. Otherwise the flow goes on to the next gather."""
    sections: list[list[Content | Choice | Gather | str]] = [[]]
    for item in weave.items:
        if isinstance(item, Gather):
            sections.append([item.content])
        else:
            sections[-1].append(item)
    for section in sections:
        if any(isinstance(item, Content) and item.divert for item in section):
            return True
        choices = [item for item in section if isinstance(item, Choice)]
        if choices and all(choice.divert or _ends(choice.weave) for choice in choices):
            return True
    return False


def _check_names(story: Story) -> None:
    knots: set[str] = set()
    labels: dict[str, set[str]] = {}
    for flow in story.flows:
        if flow.name in knots:
            raise InkError(flow.line_no, f"a second knot or stitch named {flow.name!r}")
        knots.add(flow.name)
        labels[flow.name] = set(_labels(flow.weave))
    paths = knots | {f"{name}.{label}" for name in knots for label in labels[name]}
    for flow in story.flows:
        knot = flow.name.split(".")[0]
        for line_no, target in _diverts(flow.weave):
            known = (
                target in _ENDS
                or target in labels[flow.name]
                or bool({target, f"{knot}.{target}"} & paths)
            )
            if not known:
                raise InkError(line_no, f"divert target not found: -> {target}")


def _labels(weave: Weave):
    for item in weave.items:
        if isinstance(item, Choice | Gather) and item.label:
            yield item.label
        if isinstance(item, Choice):
            yield from _labels(item.weave)


def _diverts(weave: Weave):
    for item in weave.items:
        if isinstance(item, Content) and item.divert:
            yield item.line_no, item.divert
        elif isinstance(item, Gather) and item.content.divert:
            yield item.line_no, item.content.divert
        elif isinstance(item, Choice):
            for part in (item.start, item.choice_only, item.inner):
                if part is not None and part.divert:
                    yield item.line_no, part.divert
            yield from _diverts(item.weave)
