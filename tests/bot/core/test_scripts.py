"""📄 scripts: a scene's lineage and options, and its JSON, text, Yarn and ink files.

The Yarn and ink files are read back with the grammar checkers in tests/bot/ (no Yarn
Spinner or ink compiler installs from PyPI); the checkers' own tests show what they reject.
"""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.core import scenes
from bot.core.scripts import (
    Scene,
    as_ink,
    as_json,
    as_text,
    as_yarn,
    one_line,
    yarn_speaker,
    yarn_title,
)
from generation.tasks.presets import load_presets
from storage.rows import Generation
from tests.bot import script_grammar_ink as ink
from tests.bot import script_grammar_yarn as yarn
from tests.bot.community_presets import write_presets

GOLDEN = Scene(
    title="The Crooked Flagon, past midnight",
    characters=["Innkeeper", "Stranger"],
    tone="tense",
    lines=[
        ("Innkeeper", "We're closed. Come back at dawn."),
        ("Stranger", "I need a room. #1 priority."),
        ("Innkeeper", "Rooms are {5} silver [each]."),
    ],
    options=[
        [("Stranger", "Then I'll pay ten.")],
        [
            ("Stranger", "-> I'll sleep in the stable."),
            ("Innkeeper", "Suit yourself // the rats won't mind."),
        ],
    ],
    generation_id=7,
)

GOLDEN_YARN = """\
// Scene: The Crooked Flagon, past midnight
// Characters: Innkeeper, Stranger
// Tone: tense
title: The_Crooked_Flagon_past_midnight_7
---
Innkeeper: We're closed. Come back at dawn.
Stranger: I need a room. \\#1 priority.
Innkeeper: Rooms are \\{5\\} silver \\[each\\].
-> Stranger: Then I'll pay ten.
    Stranger: Then I'll pay ten.
-> Stranger: -> I'll sleep in the stable.
    Stranger: -> I'll sleep in the stable.
    Innkeeper: Suit yourself \\// the rats won't mind.
===
"""

GOLDEN_INK = """\
// Scene: The Crooked Flagon, past midnight
// Characters: Innkeeper, Stranger
// Tone: tense
Innkeeper: We're closed. Come back at dawn.
Stranger: I need a room. \\#1 priority.
Innkeeper: Rooms are \\{5\\} silver \\[each\\].
* [Stranger: Then I'll pay ten.]
  Stranger: Then I'll pay ten.
  -> END
* [Stranger: \\-> I'll sleep in the stable.]
  Stranger: \\-> I'll sleep in the stable.
  Innkeeper: Suit yourself /\\/ the rats won't mind.
  -> END
"""

GOLDEN_LINES = [f"{speaker}: {line}" for speaker, line in GOLDEN.lines]
GOLDEN_OPTIONS = [
    ("Stranger: Then I'll pay ten.", ["Stranger: Then I'll pay ten."]),
    (
        "Stranger: -> I'll sleep in the stable.",
        [
            "Stranger: -> I'll sleep in the stable.",
            "Innkeeper: Suit yourself // the rats won't mind.",
        ],
    ),
]


def test_golden_yarn_is_as_hand_checked_and_reads_back():
    assert as_yarn(GOLDEN) == GOLDEN_YARN
    scene = yarn.plain_scene(GOLDEN_YARN)
    assert scene.title == "The_Crooked_Flagon_past_midnight_7"
    assert scene.lines == GOLDEN_LINES
    assert scene.options == GOLDEN_OPTIONS


def test_golden_ink_is_as_hand_checked_and_reads_back():
    assert as_ink(GOLDEN) == GOLDEN_INK
    scene = ink.plain_scene(GOLDEN_INK)
    assert scene.lines == GOLDEN_LINES
    assert scene.choices == GOLDEN_OPTIONS


def test_json_keeps_todays_fields_and_adds_options():
    data = json.loads(as_json(GOLDEN))
    assert list(data) == ["generation_id", "scene", "characters", "tone", "lines", "options"]
    assert data["lines"][1] == {"speaker": "Stranger", "line": "I need a room. #1 priority."}
    assert [[pair["speaker"] for pair in branch] for branch in data["options"]] == [
        ["Stranger"],
        ["Stranger", "Innkeeper"],
    ]


def test_text_is_the_scene_then_its_lines_then_numbered_options():
    assert as_text(GOLDEN) == (
        "Scene: The Crooked Flagon, past midnight\n\n"
        + "".join(line + "\n" for line in GOLDEN_LINES)
        + "\nOptions:\n"
        "1. Stranger: Then I'll pay ten.\n"
        "2. Stranger: -> I'll sleep in the stable.\n"
        "   Innkeeper: Suit yourself // the rats won't mind.\n"
    )


def test_without_options_the_ink_ends_and_the_yarn_has_none():
    scene = Scene("a forge", ["Smith"], "", [("Smith", "Hot iron.")], [], None)
    assert as_ink(scene).endswith("Smith: Hot iron.\n-> END\n")
    assert ink.plain_scene(as_ink(scene)).choices == []
    assert yarn.plain_scene(as_yarn(scene)).options == []
    assert yarn_title(scene) == "A_forge"
    assert as_text(scene) == "Scene: a forge\n\nSmith: Hot iron.\n"


def test_node_titles_are_node_names():
    assert yarn_title(Scene("  ", generation_id=3)) == "Scene_3"
    assert yarn_title(Scene("12 angry men")) == "Scene_12_angry_men"
    assert yarn_title(Scene("Café «noir» ☕")) == "Cafe_noir"
    assert yarn_title(Scene("森の中")) == "Scene"


# --- any speaker and line, however hostile, reaches the player as it was -----------------------

_HOSTILE = [
    ":", "::", "#", "#tag", "{", "}", "{$x}", "[", "]", "[b]", "[/b]", "<<", ">>", "<<jump X>>",
    "->", "<-", "<>", "=>", "===", "---", "//", "/*", "*/", "\\", "\\\\", "|", "~", "*", "+", "-",
    "=", "(", ")", "$", "^", '"', "TODO", "VAR", "VAR\U0001b287", "INCLUDE", "INCLUDEd", "title:",
    "END", "é", "🙂", "\u200b", "\u00a0", "\t", "\n", "\r", "\u2028", "\x00", "\x1f", "  ", "a",
    "Bob", " ", ".",
]  # fmt: skip
_text = st.lists(
    st.sampled_from(_HOSTILE) | st.text(st.characters(exclude_categories=("Cs",)), max_size=6),
    max_size=8,
).map("".join)
_pairs = st.lists(st.tuples(_text, _text), max_size=5)
_scenes = st.builds(
    Scene,
    title=_text,
    characters=st.lists(_text, max_size=3),
    tone=_text,
    lines=_pairs,
    options=st.lists(_pairs, max_size=3),
    generation_id=st.none() | st.integers(0, 10**9),
)
_PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _shown(speaker: str, line: str) -> str:
    speaker, line = one_line(speaker), one_line(line)
    return f"{speaker}: {line}".rstrip() if speaker else line


def _shown_yarn(speaker: str, line: str) -> str:
    label, line = yarn_speaker(speaker), one_line(line)
    return f"{label}: {line}".rstrip() if label else line


def _expected(pairs: list[tuple[str, str]], show: Any) -> list[str]:
    return [text for text in (show(s, t) for s, t in pairs) if text]


def _unguarded(text: str) -> str:
    return text.removeprefix("\u00a0")  # the no-break space before a line Yarn would misread


@_PROPERTY
@given(_scenes)
def test_any_scene_makes_yarn_that_reads_back_as_its_lines(scene: Scene):
    read = yarn.plain_scene(as_yarn(scene))
    assert yarn.NODE_NAME.fullmatch(read.title) and read.title.isascii()
    assert read.title[0].isalpha() and read.title == yarn_title(scene)
    assert list(map(_unguarded, read.lines)) == _expected(scene.lines, _shown_yarn)
    expected = [b for b in (_expected(b, _shown_yarn) for b in scene.options) if b]
    assert [(_unguarded(text), list(map(_unguarded, body))) for text, body in read.options] == [
        (branch[0], branch) for branch in expected
    ]
    spoken = [(one_line(s), one_line(t)) for s, t in scene.lines if _shown_yarn(s, t)]
    for (speaker, line), text in zip(spoken, read.lines, strict=True):
        if yarn_speaker(speaker):  # the runtime finds the character before the first colon
            assert yarn.split_speaker(text) == (yarn_speaker(speaker), line)


@_PROPERTY
@given(_scenes)
def test_any_scene_makes_ink_that_reads_back_as_its_lines(scene: Scene):
    read = ink.plain_scene(as_ink(scene))
    assert read.lines == _expected(scene.lines, _shown)
    expected = [branch for branch in (_expected(b, _shown) for b in scene.options) if branch]
    assert read.choices == [(branch[0], branch) for branch in expected]


@_PROPERTY
@given(_scenes)
def test_any_scene_makes_json_and_text(scene: Scene):
    data = json.loads(as_json(scene))
    assert [_shown(p["speaker"], p["line"]) for p in data["lines"]] == _expected(
        scene.lines, _shown
    )
    assert len(data["options"]) == len([b for b in scene.options if _expected(b, _shown)])
    text = as_text(scene)
    assert text.startswith(f"Scene: {one_line(scene.title)}\n\n")
    assert not [c for c in text if c != "\n" and unicodedata.category(c) == "Cc"]


# --- the scene of a generation: its lineage and its 🔀 children ----------------------------------

_WHEN = datetime(2025, 1, 1, tzinfo=UTC)
_FIELDS = {"scene": "a tavern", "characters": "Innkeeper, Stranger", "tone": "wary", "lines": 2}


def _generation(
    id: int, parent: Generation | None, output: str, *, ask: str | None = None, **changes: Any
) -> Generation:
    """A dialogue generation; with `ask`, a follow-up of `parent` as scenes.follow_up makes."""
    if ask is None and parent is None:
        messages = [{"role": "system", "content": "Write dialogue."}]
        messages.append({"role": "user", "content": "Scene: a tavern"})
    elif ask is None:
        messages = list(parent.messages)  # 🔁: the same request again
    else:
        messages = [*parent.messages, {"role": "assistant", "content": parent.output or ""}]
        messages.append({"role": "user", "content": ask})
    values: dict[str, Any] = {
        "id": id,
        "parent_id": parent.id if parent else None,
        "root_id": parent.root_id if parent else id,
        "conversation_id": None,
        "user_id": 1,
        "guild_id": None,
        "channel_id": None,
        "message_id": None,
        "task": "dialogue",
        "fields": dict(_FIELDS),
        "messages": messages,
        "params": {},
        "model_id": "m",
        "model_revision": None,
        "output": output,
        "finish_reason": "stop",
        "tokens_in": 1,
        "tokens_out": 1,
        "ttft_ms": 1.0,
        "total_ms": 1.0,
        "status": "done",
        "error": None,
        "created_utc": _WHEN,
        "finished_utc": _WHEN,
        "deleted_utc": None,
    }
    values.update(changes)
    return Generation(**values)


class FakeStore:
    """`get_generation` and `children` (direct, not deleted, by id) over a few generations."""

    def __init__(self, *generations: Generation) -> None:
        self.rows = {g.id: g for g in generations}

    async def get_generation(self, generation_id: int) -> Generation | None:
        return self.rows.get(generation_id)

    async def children(self, generation_id: int) -> list[Generation]:
        rows = [g for g in self.rows.values() if g.parent_id == generation_id]
        return sorted((g for g in rows if g.status != "deleted"), key=lambda g: g.id)


CONTINUE = scenes.CONTINUE.format(lines=2)
ROOT = _generation(1, None, "Innkeeper: We're closed.\nStranger: I can pay.")
MORE = _generation(2, ROOT, "Innkeeper: How much?\nStranger: Gold.", ask=CONTINUE)
RETAKE = _generation(3, MORE, "Innkeeper: Show me.\nStranger: Here.")  # 🔁 of ▶ 2
BRANCH_A = _generation(4, MORE, "Innkeeper: Not enough.", ask=scenes.BRANCH)
BRANCH_B = _generation(5, MORE, "Innkeeper: Upstairs, then.", ask=scenes.BRANCH)
FAILED = _generation(6, MORE, "Innkeeper: Get o", ask=scenes.BRANCH, status="failed")
GONE = _generation(7, MORE, "Innkeeper: Hm.", ask=scenes.BRANCH, status="deleted")
AFTER = _generation(8, MORE, "Innkeeper: Fine.\nStranger: Good.", ask=CONTINUE)  # ▶, not an option
DEEPER = _generation(9, BRANCH_A, "Stranger: Then silver.\nInnkeeper: Done.", ask=CONTINUE)
RETAKE_B = _generation(10, BRANCH_A, "Innkeeper: Too little.")  # 🔁 of 🔀 4: not an option
STORE = FakeStore(ROOT, MORE, RETAKE, BRANCH_A, BRANCH_B, FAILED, GONE, AFTER, DEEPER, RETAKE_B)


def test_follow_kind_tells_continue_from_branch():
    assert scenes.follow_kind(ROOT) is None
    assert scenes.follow_kind(MORE) == "continue"
    assert scenes.follow_kind(BRANCH_A) == "branch"
    assert scenes.follow_kind(RETAKE) == "continue"  # a take of a ▶ repeats its ask
    assert scenes.follow_kind(_generation(11, ROOT, "hi", ask=scenes.BRANCH, task="chat")) is None
    assert scenes.follow_kind(_generation(12, ROOT, "", ask="Make it rhyme.")) is None
    assert scenes.follow_kind(_generation(13, ROOT, "", ask=scenes.CONTINUE.format(lines=12)))
    for branch in (False, True):  # what the buttons send is what follow_kind reads
        _, messages, _ = scenes.follow_up(ROOT, branch=branch)
        child = _generation(14, ROOT, "", messages=[m.as_dict() for m in messages])
        assert scenes.follow_kind(child) == ("branch" if branch else "continue")


async def test_a_scene_is_its_lineage_with_its_branches_as_options():
    scene = await scenes.scene_of(STORE, MORE)
    assert scene.lines == [
        ("Innkeeper", "We're closed."),
        ("Stranger", "I can pay."),
        ("Innkeeper", "How much?"),
        ("Stranger", "Gold."),
    ]
    assert scene.options == [[("Innkeeper", "Not enough.")], [("Innkeeper", "Upstairs, then.")]]
    assert (scene.title, scene.characters, scene.tone) == (
        "a tavern",
        ["Innkeeper", "Stranger"],
        "wary",
    )
    assert scene.generation_id == 2


async def test_a_branch_continued_keeps_the_branch_line_and_a_retake_replaces_its_parent():
    deeper = await scenes.scene_of(STORE, DEEPER)
    assert [line for _, line in deeper.lines] == [
        "We're closed.", "I can pay.", "How much?", "Gold.", "Not enough.", "Then silver.", "Done.",
    ]  # fmt: skip
    assert deeper.options == []
    retake = await scenes.scene_of(STORE, RETAKE)
    assert [line for _, line in retake.lines] == [
        "We're closed.", "I can pay.", "Show me.", "Here.",
    ]  # fmt: skip
    branch = await scenes.scene_of(STORE, BRANCH_A)
    assert [line for _, line in branch.lines][-2:] == ["Gold.", "Not enough."]
    assert branch.options == []  # its 🔁 take is another take, not an alternative


async def test_a_task_of_the_dialogue_kind_is_followed_by_its_kind(tmp_path: Path):
    presets = load_presets(write_presets(tmp_path))  # adds screenplay, of kind dialogue
    root = _generation(1, None, "Ana: Open it.", task="screenplay")
    more = _generation(2, root, "Ben: It's empty.", ask=CONTINUE, task="screenplay")
    assert scenes.follow_kind(more) is None  # the built-in presets have no screenplay
    assert scenes.follow_kind(more, presets) == "continue"
    scene = await scenes.scene_of(FakeStore(root, more), more, presets)
    assert scene.lines == [("Ana", "Open it."), ("Ben", "It's empty.")]


async def test_a_missing_ancestor_ends_the_lineage_there():
    store = FakeStore(MORE, BRANCH_A)
    scene = await scenes.scene_of(store, BRANCH_A)
    assert [line for _, line in scene.lines] == ["How much?", "Gold.", "Not enough."]


async def test_scene_files_are_the_four_scripts():
    files = dict(await scenes.scene_files(STORE, MORE))
    assert list(files) == ["scene-2.json", "scene-2.txt", "scene-2.yarn", "scene-2.ink"]
    assert json.loads(files["scene-2.json"])["options"][1] == [
        {"speaker": "Innkeeper", "line": "Upstairs, then."}
    ]
    assert files["scene-2.txt"].startswith("Scene: a tavern\n\nInnkeeper: We're closed.\n")
    assert yarn.plain_scene(files["scene-2.yarn"]).options[0] == (
        "Innkeeper: Not enough.",
        ["Innkeeper: Not enough."],
    )
    assert ink.plain_scene(files["scene-2.ink"]).lines[-1] == "Stranger: Gold."


# --- the checkers reject what Yarn Spinner and ink would not read as plain lines ----------------

_YARN_OK = "title: Start\n---\nA: hi\n===\n"


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("title: Start\n---\nA: hi\n", "no `===`"),
        ("---\nA: hi\n===\n", "no headers"),
        ("tags: x\n---\nA: hi\n===\n", "without a `title:`"),
        ("title: Not a name\n---\nA: hi\n===\n", "not a node name"),
        ("title: 1st\n---\nA: hi\n===\n", "not a node name"),
        (_YARN_OK + _YARN_OK, "a second node titled"),
        ("title: S\n---\n<<jump Nowhere>>\n===\n", "no such node"),
        ("title: S\n---\n->\n===\n", "option without text"),
        ("title: S\n---\n-> // nothing\n===\n", "option without text"),
        ("title: S\n---\n-> #tag\n===\n", "option without text"),
        ("title: S\n---\nA: {\n===\n", "without `}`"),
        ("title: S\n---\nA: {foo}\n===\n", "a function needs"),
        ("title: S\n---\nA: \\q\n===\n", "not an escape"),
        ("title: S\n---\nA: hi \\\n===\n", "not an escape"),
        ("title: S\n---\n<<wait 1\n===\n", "without `>>`"),
        ("title: S\n---\n<<if $x>>\nA: hi\n===\n", "without <<endif>>"),
        ("title: S\n---\n<<endif>>\n===\n", "without <<if>>"),
        ("title: S\n---\nA: hi #\n===\n", "no hashtag text"),
        ("title: S\n---\nA: hi <<set $x = 1>>\n===\n", "only one <<if"),
        ("title: S\nnonsense\n---\n===\n", "not a header"),
        ("title: S\n---\nA: hi\n=== more\n", "text after"),
    ],
)
def test_the_yarn_checker_rejects_broken_scripts(source: str, why: str):
    with pytest.raises(yarn.YarnError, match=why):
        yarn.parse(source)


@pytest.mark.parametrize(
    "body",
    [
        "A: I have rooms #5",  # a hashtag ("#5 rooms." would not even parse)
        "A: {$rooms} rooms.",  # an expression
        "A: [b]bold[/b]",  # markup
        "A: no ] here",
        "A: hi <<if $x>>",  # a condition
        "<<wait 1>>",  # a command
        "-> A: hi\n    -> B: nested",  # options in an option
    ],
)
def test_yarn_that_parses_but_is_not_plain_lines_is_rejected(body: str):
    source = f"title: S\n---\n{body}\n===\n"
    yarn.parse(source)
    with pytest.raises(yarn.YarnError):
        yarn.plain_scene(source)


def test_the_yarn_checker_reads_the_rest_of_the_language():
    source = (
        "# file_tag\n// a comment\ntitle: Start\ntags: one two\n---\n"
        "<<declare $gold = 5>>\nA: You have {$gold + 1} gold. #line:abc // note\n"
        '<<if $gold > 3 and not visited("Shop")>>\n    A: Rich!\n<<elseif $gold == 0>>\n'
        "    A: Poor.\n<<else>>\n    A: Fine.\n<<endif>>\n"
        "-> Buy <<if $gold > 1>>\n    <<set $gold -= 2>>\n    <<jump Shop>>\n-> Leave\n"
        "B: \\{ \\} \\# \\< \\> \\/ \\\\ \\[x\\]\n===\ntitle: Shop\n---\n<<stop>>\n===\n"
    )
    dialogue = yarn.parse(source)
    assert [node.title for node in dialogue.nodes] == ["Start", "Shop"]
    last = dialogue.nodes[0].body[-1]
    assert isinstance(last, yarn.Line) and last.text == "B: { } # < > / \\ [x]" and last.plain
    options = dialogue.nodes[0].body[-2]
    assert isinstance(options, yarn.OptionGroup) and len(options.options) == 2
    assert options.options[0].line.condition and options.options[1].body == []


_INK_OK = "A: hi\n-> END\n"


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("A: hi\n", "loose end"),  # no `-> END`
        ("* [A: hi]\n  A: hi\n* [B: yo]\n  -> END\n", "loose end"),  # a branch that stops
        ("A: hi\n-> nowhere\n", "divert target not found"),
        ("A: hi -> END x\n", "expected end of line after a divert"),
        ("A: a | b\n-> END\n", "expected end of line"),
        ("A: a } b\n-> END\n", "expected end of line"),
        ("A: {b\n-> END\n", "without `}`"),
        ("*\n-> END\n", "choice without text"),
        ("* []\n  -> END\n", "choice without text"),
        ("* [A: hi\n  -> END\n", "`\\[` without `\\]`"),
        ("* [a [b] c]\n  -> END\n", "`\\[` without `\\]`"),
        ("* \\[a]\n  -> END\n", "unexpected"),
        ("VAR: hi\n-> END\n", "VAR"),
        ("INCLUDE: other.ink\n-> END\n", "INCLUDE"),
        ("INCLUDEd: a line\n-> END\n", "INCLUDE"),
        ("VAR\U0001b287: hi\n-> END\n", "VAR"),  # ink's identifiers stop at U+1B287
        ("A: hi #tag <- t\n-> END\n", "thread"),
        ("~ x = 1\n-> END\n", "logic"),
        ("A: hi\n/* unclosed\n-> END\n", "without"),
        ("** [deep]\n  -> END\n", "depth-2"),
        ("-> k\n== k\n== k\nhi\n-> END\n", "has no lines"),
        ("-> k\n== k\nhi\n-> END\n== k\nho\n-> END\n", "a second knot"),
        ("= bad name here\n-> END\n", "not a knot or stitch"),
        ("A: hi ->-> t\n", "tunnels"),
    ],
)
def test_the_ink_checker_rejects_broken_scripts(source: str, why: str):
    with pytest.raises(ink.InkError, match=why):
        ink.parse(source)


@pytest.mark.parametrize(
    "source",
    [
        "A: a #tag\n-> END\n",  # a tag
        "A: {x}\n-> END\n",  # inline logic
        "A: a <> b\n-> END\n",  # glue
        "TODO: A: hi\n-> END\n",  # a note, not a line
        "-> k\n== k\nA: hi\n-> END\n",  # a knot
        "A: hi\n- A: gathered\n-> END\n",  # a gather
        "* A: [hi]\n  -> END\n",  # text outside the brackets
        "* [A: hi] -> END\n",  # a divert on the choice line
        "+ [A: hi]\n  -> END\n",  # a sticky choice
        "A: hi\n-> END\nB: after\n",  # lines after the end
    ],
)
def test_ink_that_parses_but_is_not_plain_lines_is_rejected(source: str):
    ink.parse(source)
    with pytest.raises(ink.InkError):
        ink.plain_scene(source)


def test_the_ink_checker_reads_the_rest_of_the_language():
    source = (
        "VAR gold = 5\n// a comment\nA: /* inline */ hi \\/\\/ there /\\/ \\{ok\\} \\| \\#\n"
        "-> shop\n=== shop ===\n= counter\n* (buy) {gold > 1} Buy [it] now -> till\n"
        "* [Leave]\n  ** [Wave]\n     Bye.\n  ** [Nod] -> END\n  - - -> END\n"
        "= till\nPaid. -> counter.buy\n"
    )
    story = ink.parse(source)
    assert [flow.name for flow in story.flows] == ["", "shop", "shop.counter", "shop.till"]
    first = story.flows[0].weave.items[1]
    assert isinstance(first, ink.Content) and first.text == "A:  hi // there // {ok} | #"
    buy = story.flows[2].weave.items[0]
    assert isinstance(buy, ink.Choice) and buy.shown == "Buy it" and buy.divert == "till"
    assert buy.label == "buy" and buy.condition
