"""A task's behaviour comes from its kind in the loaded presets, and the commands' choices from
the presets: the built-in ones give the contract's lists, a community's file adds to them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.core.app import Muse
from bot.core.choices import one_of, option_choices, two_take_tasks
from bot.core.plans import make_plan
from bot.core.policy import Refused
from bot.core.settings import Settings
from bot.core.settle import settle
from bot.discord.cogs.admin import settings_changes
from generation.errors import OptionError
from generation.tasks.presets import DIALOGUE, TEXT, load_presets
from generation.types import GenerationChunk
from storage.store import Store
from tests.bot.community_presets import write_presets
from tests.bot.fakes import ReplayEngine


def test_the_built_in_presets_give_the_contracts_choices() -> None:
    lists = option_choices(load_presets())
    assert lists[("story", "length")] == ("short", "medium", "long")
    assert lists[("poem", "form")] == ("free", "haiku", "sonnet", "limerick")
    assert lists[("describe", "kind")] == ("product", "ad", "social", "news")
    for command in ("compare", "arena", "leaderboard"):
        assert lists[(command, "task")] == ("story", "poem", "describe", "generate")
    assert ("dialogue", "task") not in lists  # one task of the dialogue kind: no choice


def test_a_community_file_adds_a_choice_and_a_task_of_a_kind(tmp_path: Path) -> None:
    presets = load_presets(write_presets(tmp_path))
    lists = option_choices(presets)
    assert lists[("poem", "form")] == ("free", "ode")
    assert lists[("dialogue", "task")] == ("dialogue", "screenplay")
    assert two_take_tasks(presets) == ("story", "poem", "describe", "generate", "screenplay")


def test_enabled_tasks_may_name_a_community_task(tmp_path: Path) -> None:
    tasks = tuple(load_presets(write_presets(tmp_path)))
    assert settings_changes({"enabled_tasks": "screenplay, /story"}, tasks) == {
        "enabled_tasks": ("screenplay", "story")
    }
    with pytest.raises(Refused, match="Unknown task screenplay"):
        settings_changes({"enabled_tasks": "screenplay"})  # the built-in tasks alone


def test_one_of_names_the_choices() -> None:
    assert one_of(("story", "poem", "generate")) == "story, poem or generate"
    assert one_of(("dialogue",)) == "dialogue"


async def test_the_app_asks_the_kind_and_a_dropped_task_falls_back(tmp_path: Path) -> None:
    settings = Settings(db_path=tmp_path / "muse.db")
    async with Store.open(settings.db_path) as store:
        presets = load_presets(write_presets(tmp_path))
        app = Muse(settings=settings, store=store, engine=ReplayEngine(), presets=presets)
        assert app.kind_of("screenplay") == app.kind_of("dialogue") == DIALOGUE
        assert app.kind_of("story") == TEXT
        assert app.kind_of("riddle") == TEXT  # a stored row of a task the presets dropped
        with pytest.raises(OptionError, match="/riddle is not offered here any more"):
            make_plan(app, 1, "riddle", {"prompt": "x"})
        # a cut screenplay keeps its whole lines, as a dialogue does; a cut story its sentences
        cut = "Ana: We go now. Quietly.\nBen: Wait, the"
        last = GenerationChunk("r", "", cut, True, "length")
        fields = {"scene": "a vault", "characters": "Ana, Ben", "lines": 2}
        scene = await settle(app, make_plan(app, 1, "screenplay", fields), None, last)
        assert (scene.kind, scene.output) == (DIALOGUE, cut)
        story = await settle(app, make_plan(app, 1, "story", {"prompt": "x"}), None, last)
        assert (story.kind, story.output) == (TEXT, "Ana: We go now. Quietly.")


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        (
            "[x]\nkind = 'dialogue'\ntemplate = '{scene} {characters}'\nmain_field = 'scene'\n",
            "is of kind dialogue: it needs the fields characters and lines",
        ),
        (
            "[x]\ncompare = true\ntemplate = '{a} {b}'\nmain_field = 'a'\n",
            "one prompt fills a: b need defaults",
        ),
        ("[x]\ncompare = 'yes'\ntemplate = '{a}'\nmain_field = 'a'\n", "compare must be true"),
    ],
)
def test_a_preset_that_its_kind_or_compare_cannot_run_is_refused(
    tmp_path: Path, toml: str, says: str
) -> None:
    with pytest.raises(OptionError, match=says):
        load_presets(write_presets(tmp_path, toml))
