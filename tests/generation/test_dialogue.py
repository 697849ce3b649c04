"""Dialogue normalisation: plain `Name: line` lines for the named characters only."""

from __future__ import annotations

from generation.dialogue import normalise_dialogue, parse_characters


def test_parse_characters_trims_and_deduplicates():
    assert parse_characters(" Innkeeper ,Stranger, ,innkeeper ,Stranger") == [
        "Innkeeper",
        "Stranger",
        "innkeeper",
    ]


def test_labels_in_many_shapes_become_plain_lines():
    raw = (
        "**Innkeeper:** Welcome, traveller.\n"
        "- Stranger: A room, please.\n"
        "1. innkeeper - Ten silver.\n"
        "*Stranger*: Fine.\n"
    )
    assert normalise_dialogue(raw, ["Innkeeper", "Stranger"]) == (
        "Innkeeper: Welcome, traveller.\nStranger: A room, please.\n"
        "Innkeeper: Ten silver.\nStranger: Fine."
    )


def test_other_speakers_and_narration_are_dropped():
    raw = (
        "The tavern is quiet.\n"
        "Innkeeper: We close at midnight, mind you.\n"
        "(she wipes a glass)\n"
        "Guard: Open up!\n"
        "he shouts.\n"
        "Sir Roland: I'll pay double.\n"
    )
    assert normalise_dialogue(raw, ["Innkeeper", "Sir Roland"]) == (
        "Innkeeper: We close at midnight, mind you.\nSir Roland: I'll pay double."
    )


def test_first_names_and_abbreviations_match_and_lines_are_capped():
    raw = "Roland: One.\nInnkeep: Two.\nRoland: Three.\n"
    assert normalise_dialogue(raw, ["Innkeeper", "Sir Roland"], max_lines=2) == (
        "Sir Roland: One.\nInnkeeper: Two."
    )
