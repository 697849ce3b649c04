"""The commands' choice lists, built from the loaded presets and shared by both front ends: a
community's `MUSE_PRESETS` file adds a choice (a poem form) or a task of an existing kind (a
screenplay of kind dialogue) without code."""

from __future__ import annotations

from collections.abc import Mapping

from generation.tasks.presets import DIALOGUE, Preset, tasks_of_kind

Choices = dict[tuple[str, str], tuple[str, ...]]  # (command, option) → its choices, in order
TWO_TAKE_COMMANDS = ("compare", "arena", "leaderboard")  # their `task`: the two-take tasks
KIND_COMMANDS = {"dialogue": DIALOGUE}  # a kind's command: its `task` picks a task of the kind


def two_take_tasks(presets: Mapping[str, Preset]) -> tuple[str, ...]:
    """The tasks /compare and /arena offer (a preset's `compare = true`), in preset order."""
    return tuple(name for name, preset in presets.items() if preset.compare)


def option_choices(presets: Mapping[str, Preset]) -> Choices:
    """Every option whose choices come from the presets: each preset's choice fields as the
    options of the command of its name (/poem's form); /compare's, /arena's and /leaderboard's
    task; /dialogue's task when the presets hold more than one task of the dialogue kind (with
    one, the option is not offered)."""
    lists: Choices = {
        (name, field): tuple(options)
        for name, preset in presets.items()
        for field, options in preset.choices.items()
    }
    for command in TWO_TAKE_COMMANDS:
        lists[(command, "task")] = two_take_tasks(presets)
    for command, kind in KIND_COMMANDS.items():
        tasks = tasks_of_kind(presets, kind)
        if len(tasks) > 1:
            lists[(command, "task")] = tasks
    return lists


def one_of(choices: tuple[str, ...]) -> str:
    """`a, b or c`: how a refusal names the choices."""
    return " or ".join(filter(None, (", ".join(choices[:-1]), choices[-1]))) if choices else ""
