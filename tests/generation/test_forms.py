"""Labelled forms (/character, /quest, /describe kind:news): one line per label, in order."""

from __future__ import annotations

from generation.forms import normalise_form
from generation.presets import load_presets
from generation.requests import build_request, finish_text

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
    assert news.response_prefix == "Headline:"
    assert build_request(presets["describe"], {"product": "a lamp"}).response_prefix == ""
    shown = finish_text(
        presets["describe"], {"product": "a lamp", "kind": "news"}, "Headline: A\nB."
    )
    assert shown == "Headline: A\nStory: B."
