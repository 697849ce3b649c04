"""The console takes the choices of the loaded presets, as Discord does: a MUSE_PRESETS file's
poem form and its screenplay (a task of the dialogue kind, through /dialogue's task), in its
parser, its /help and a session over the real engine."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest

from bot.cli.wiring import presets_from
from bot.console.parse import ConsoleError, commands_for, help_text, parse_line
from bot.console.session import Console
from bot.console.terminal import Terminal
from bot.core.app import Muse
from bot.core.settings import Settings
from generation.tasks.presets import load_presets
from storage.store import Store
from tests.bot.community_presets import ODE_HINT, write_presets
from tests.bot.fakes import ReplayEngine


def test_the_parser_takes_the_presets_choices(tmp_path: Path) -> None:
    commands = commands_for(load_presets(write_presets(tmp_path)))
    assert parse_line("/poem rain form=ode", commands).values == {"topic": "rain", "form": "ode"}  # type: ignore[union-attr]
    line = "/dialogue scene=x characters=A,B task=screenplay"
    assert parse_line(line, commands).values["task"] == "screenplay"  # type: ignore[union-attr]
    with pytest.raises(ConsoleError, match="form must be one of free, ode, not 'haiku'"):
        parse_line("/poem rain form=haiku", commands)
    with pytest.raises(ConsoleError, match="task must be one of story, poem, describe"):
        parse_line("/compare x task=quest", commands)
    assert "task=dialogue|screenplay" in help_text(commands)
    assert "form=free|ode" in help_text(commands)
    assert "task=story|poem|describe|generate|screenplay" in help_text(commands)
    # the built-in presets alone: the contract's choices, and /dialogue without a task option
    with pytest.raises(ConsoleError, match="/dialogue has no option task"):
        parse_line(line)
    with pytest.raises(ConsoleError, match="form must be one of free, haiku, sonnet, limerick"):
        parse_line("/poem rain form=ode")


async def test_a_session_writes_the_community_form_and_screenplay(tmp_path: Path) -> None:
    """The texts come from the replay engine (the Discord test runs the real model through the
    same presets), so what the screenplay's kind does to them is exact."""
    settings = Settings(db_path=tmp_path / "muse.db", presets_path=str(write_presets(tmp_path)))
    engine = ReplayEngine(
        [
            "Pale sea, we praise you.",
            "Ana: Open it.\nThe door creaks.\nBen: It's empty.",
            "Ben: Run.",
        ]
    )
    typed = "\n".join(
        [
            "/poem the sea form=ode",
            "s",
            '/dialogue scene="a bank vault" characters="Ana, Ben" task=screenplay',
            "c",
            "s",
            "/quit",
        ]
    )
    out = io.StringIO()
    async with Store.open(settings.db_path) as store:
        app = Muse(settings=settings, store=store, engine=engine, presets=presets_from(settings))
        terminal = Terminal(io.StringIO(typed + "\n"), out, interactive=False)
        assert await Console(app, terminal).serve() == 0
    with sqlite3.connect(settings.db_path) as conn:
        gens = conn.execute(
            "SELECT task, parent_id, status, fields_json, output FROM generations ORDER BY id"
        ).fetchall()
    assert [(task, parent, status) for task, parent, status, *_ in gens] == [
        ("poem", None, "done"),
        ("screenplay", None, "done"),
        ("screenplay", 2, "done"),  # c: the scene's next lines, as a dialogue's
    ], out.getvalue()
    assert json.loads(gens[0][3])["form"] == "ode"
    assert ODE_HINT in engine.requests[0].messages[-1].content
    # the dialogue rules kept the cast's lines, and the console showed them as a dialogue
    assert gens[1][4] == "Ana: Open it.\nBen: It's empty."
    assert "--- as dialogue ---\nAna: Open it.\nBen: It's empty." in out.getvalue()
    # ▶ asks for the screenplay's default number of lines (2), as /dialogue's ask for its 6
    assert engine.requests[2].messages[-1].content.startswith("Continue the scene with 2 ")
