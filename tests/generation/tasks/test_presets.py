"""Presets: the built-in file, rendering, validation and a community's own file."""

from __future__ import annotations

from pathlib import Path

import pytest

from generation.errors import OptionError
from generation.tasks.presets import TASKS, load_presets, parse_presets
from generation.tasks.task_rules import build_request, finish_text


def test_builtin_presets_cover_every_task_with_a_repetition_penalty():
    presets = load_presets()
    assert set(TASKS) <= set(presets)
    for preset in presets.values():
        assert preset.sampling["repetition_penalty"] > 1.0
        assert preset.main_field in preset.fields


def test_render_fills_fields_hints_and_examples():
    poem = load_presets()["poem"]
    messages = poem.render({"topic": "autumn rain", "form": "haiku"})
    assert messages[0].role == "system"
    assert [m.role for m in messages[1:]] == ["user", "assistant", "user"]  # one worked example
    assert messages[-1].content.startswith("Write a haiku about autumn rain.")
    assert "five, seven and five" in messages[-1].content


def test_choices_change_sampling_and_overrides_win():
    story = load_presets()["story"]
    short = story.request({"prompt": "a fox", "length": "short"})
    long = story.request({"prompt": "a fox", "length": "long"})
    assert short.max_new_tokens < long.max_new_tokens
    assert story.request({"prompt": "a fox"}, temperature=0.1).temperature == 0.1
    assert story.request({"prompt": "a fox"}, temperature=None).temperature == 0.7


@pytest.mark.parametrize(
    ("task", "fields", "message"),
    [
        ("story", {}, "needs prompt"),
        ("story", {"prompt": "   "}, "needs prompt"),
        ("story", {"prompt": "x", "length": "epic"}, "length must be one of short, medium, long"),
        ("poem", {"topic": "x", "colour": "red"}, "has no option colour"),
    ],
)
def test_bad_fields_are_refused_with_the_reason(task, fields, message):
    with pytest.raises(OptionError, match=message):
        load_presets()[task].render(fields)


def test_dialogue_request_starts_with_the_first_character_and_sizes_its_budget():
    dialogue = load_presets()["dialogue"]
    fields = {"scene": "a tavern", "characters": "Innkeeper, Stranger", "lines": "4"}
    request = build_request(dialogue, fields)
    assert request.response_prefix == "Innkeeper:"
    assert request.max_new_tokens < dialogue.sampling["max_new_tokens"]
    raw = "Innkeeper: Welcome.\nNarrator walks in.\nStranger: Ale.\nGuard: Halt!\nInnkeep: Sure."
    assert (
        finish_text(dialogue, fields, raw)
        == "Innkeeper: Welcome.\nStranger: Ale.\nInnkeeper: Sure."
    )


def test_a_community_file_adds_and_replaces_presets(tmp_path: Path):
    extra = tmp_path / "mine.toml"
    extra.write_text(
        '[riddle]\ntemplate = "Write a riddle about {thing}."\nmain_field = "thing"\n'
        "[riddle.sampling]\ntemperature = 0.9\n"
        '[generate]\nsystem = "Answer like a pirate."\n'
        'template = "{prompt}"\nmain_field = "prompt"\n'
    )
    presets = load_presets(extra)
    assert presets["riddle"].render({"thing": "a key"})[-1].content == "Write a riddle about a key."
    assert presets["generate"].render({"prompt": "hi"})[0].content == "Answer like a pirate."
    assert "story" in presets


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[x]\nsystem = 'no template'\n", "needs a template"),
        ("[x]\ntemplate = '{a}'\nmain_field = 'b'\n", "main_field"),
        ("[x]\ntemplate = '{a}'\nmain_field = 'a'\n[x.sampling]\nheat = 2\n", "unknown sampling"),
        ("[x]\ntemplate = '{a'\nmain_field = 'a'\n", "not valid"),
        ("[x\n", "cannot read"),
    ],
)
def test_invalid_preset_files_are_refused_clearly(tmp_path: Path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(OptionError, match=message):
        parse_presets(path)


def test_a_community_task_of_the_dialogue_kind_gets_the_dialogue_rules(tmp_path: Path):
    extra = tmp_path / "mine.toml"
    extra.write_text(
        '[screenplay]\nkind = "dialogue"\n'
        'template = "Scene: {scene}\\nCast: {characters}\\nWrite {lines} lines."\n'
        'main_field = "scene"\n[screenplay.defaults]\nlines = "4"\n'
    )
    presets = load_presets(extra)
    screenplay = presets["screenplay"]
    assert screenplay.kind == "dialogue" and presets["story"].kind == "text"
    fields = {"scene": "a tavern", "characters": "Innkeeper, Stranger"}
    assert build_request(screenplay, fields).response_prefix == "Innkeeper:"
    raw = "Innkeeper: Welcome.\nNarrator walks in.\nStranger: Ale."
    assert finish_text(screenplay, fields, raw) == "Innkeeper: Welcome.\nStranger: Ale."


def test_an_unknown_kind_is_refused(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text("[x]\ntemplate = '{a}'\nmain_field = 'a'\nkind = 'song'\n")
    with pytest.raises(OptionError, match="kind must be one of text, dialogue"):
        parse_presets(path)
