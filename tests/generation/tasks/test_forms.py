"""Labelled forms (/character, /quest, /describe kind:news): one line per label, in order."""

from __future__ import annotations

from generation.tasks.forms import form_turn, next_form_line, normalise_form
from generation.tasks.presets import load_presets
from generation.tasks.task_rules import build_request, finish_text

CHARACTER = ("Name", "Look", "Voice", "Motive", "Secret")


def test_first_line_of_each_label_in_order_and_stray_lines_dropped():
    text = "Secret: a map\nName: Pip\n**Look:** small\nLook: tall\nRedemptive: no\nVoice: high"
    assert normalise_form(text, CHARACTER) == "Name: Pip\nLook: small\nVoice: high\nSecret: a map"


def test_an_unlabelled_line_fills_the_next_label_only_when_the_text_lacks_it():
    news = ("Headline", "Story")
    assert normalise_form("Headline: A lamp\n\nIt glows. It is new.", news) == (
        "Headline: A lamp\nStory: It glows. It is new."
    )
    assert normalise_form("Name: Pip\nchatter\nLook: small", CHARACTER) == "Name: Pip\nLook: small"


def test_missing_labels_are_never_invented_and_text_without_labels_is_kept():
    assert (
        normalise_form("Giver: X\nReward: W", ("Giver", "Goal", "Reward")) == "Giver: X\nReward: W"
    )
    assert normalise_form("  just a story  ", CHARACTER) == "just a story"


def test_presets_start_the_answer_with_the_first_label_and_keep_the_form():
    presets = load_presets()
    character = build_request(presets["character"], {"concept": "a goblin chef"})
    assert character.response_prefix == "Name:" and character.repetition_penalty > 1.0
    news = build_request(presets["describe"], {"product": "a lamp", "kind": "news"})
    assert news.response_prefix == "Headline:" and news.labels == ("Headline", "Story")
    plain = build_request(presets["describe"], {"product": "a lamp"})
    assert plain.response_prefix == "" and plain.labels == ()
    shown = finish_text(
        presets["describe"], {"product": "a lamp", "kind": "news"}, "Headline: A\nB."
    )
    assert shown == "Headline: A\nStory: B."


QUEST = ("Giver", "Goal", "Obstacle", "Twist", "Reward")


def test_the_next_form_line_is_the_label_after_the_furthest_written_once_a_line_ends():
    assert next_form_line("Giver: Hadi, the well-keeper", QUEST) is None  # the line is open
    assert next_form_line("Giver: Hadi\n", QUEST) == "Goal:"
    # A skipped label is not gone back to: the form goes on after the furthest one written.
    assert next_form_line("Giver: Hadi\nGoal: water\nTwist: a merchant\n", QUEST) == "Reward:"
    assert next_form_line("Giver: Hadi\nthe well is dry\n", QUEST) == "Goal:"
    assert next_form_line("**Giver:** Hadi\n**Goal:** water\n", QUEST) == "Obstacle:"
    assert next_form_line("\n".join(f"{label}: x" for label in QUEST) + "\n", QUEST) == ""


async def test_the_engine_writes_each_label_so_a_quest_keeps_all_five_lines(make_engine):
    """With the real model: whatever it samples, each line it ends is followed by the next
    label (the engine writes it), and the answer ends once the Reward line does."""
    preset = load_presets()["quest"]
    engine = make_engine()
    fields = {"premise": "a lighthouse keeper vanished", "setting": "a foggy coast"}
    for seed in (1, 2, 3):
        result = await engine.generate(build_request(preset, fields, seed=seed))
        lines = result.text.strip().splitlines()
        assert [line.split(":")[0] for line in lines] == list(QUEST), result.text
        assert result.finish_reason == "stop" and all(line.split(":", 1)[1] for line in lines)
        shown = finish_text(preset, fields, result.text)
        assert shown.splitlines() == lines


def test_the_form_turn_has_the_next_label_written_and_ends_the_form_once_every_label_has_its_line():
    assert form_turn("Giver: Hadi, the well-keeper", QUEST) == ("", None)  # the line is open
    assert form_turn("Giver: Hadi\n", QUEST) == ("Goal:", None)
    assert form_turn("\n".join(f"{label}: x" for label in QUEST) + "\n", QUEST) == ("", "stop")
