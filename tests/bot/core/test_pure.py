"""Pure functions: message splitting, rendering, dialogue scenes, star parsing."""

from __future__ import annotations

import pytest

from bot.core.actions import parse_stars
from bot.core.scenes import next_speaker, script_lines
from bot.discord.rendering import footer, render_dialogue
from bot.discord.splitting import split_message


def test_short_text_is_one_piece():
    assert split_message("hello") == ["hello"]


def test_split_prefers_line_breaks_and_keeps_everything():
    text = "\n".join(f"line {n} " + "x" * 50 for n in range(100))
    pieces = split_message(text)
    assert len(pieces) > 1 and all(len(p) <= 2000 for p in pieces)
    assert all(p.startswith("line ") for p in pieces)
    assert "".join(pieces).replace("\n", "") == text.replace("\n", "")


def test_split_at_sentence_ends_without_line_breaks():
    text = "A short sentence here. " * 200
    pieces = split_message(text)
    assert all(p.endswith(".") for p in pieces[:-1]) and all(len(p) <= 2000 for p in pieces)


def test_never_cuts_inside_a_code_block():
    code = "```py\n" + "\n".join(f"x{n} = {n}" for n in range(40)) + "\n```"
    text = "intro " * 300 + "\n" + code + "\nafter"
    pieces = split_message(text)
    for piece in pieces:
        assert piece.count("```") % 2 == 0 and len(piece) <= 2000
    assert any(code in piece for piece in pieces)


def test_a_code_block_longer_than_a_message_is_closed_and_reopened():
    text = "```\n" + "\n".join("y" * 60 for _ in range(80)) + "\n```"
    pieces = split_message(text)
    assert len(pieces) >= 3
    assert all(p.count("```") % 2 == 0 and len(p) <= 2000 for p in pieces)


def test_rendering():
    assert render_dialogue("Smith: Hi.\nKnight: Hello.") == "**Smith:** Hi.\n**Knight:** Hello."
    assert footer("m", 12, 1500) == "-# m · 12 tokens · 1.5 s · AI-generated"


@pytest.mark.parametrize(("text", "stars"), [("4", 4), (" 5 ", 5), ("0", None), ("x", None)])
def test_parse_stars(text: str, stars: int | None):
    assert parse_stars(text) == stars


def test_scene_helpers():
    assert script_lines("A: hi\nB: yo") == [("A", "hi"), ("B", "yo")]
    assert next_speaker(["A", "B"], "A: hi") == "B"
    assert next_speaker(["A", "B"], "") == "A"
