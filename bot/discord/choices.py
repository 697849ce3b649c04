"""The presets' choice lists (`bot.core.choices`) on the slash commands, set after the cogs load
and before the tree syncs.

discord.py declares an option's choices when the command is defined (`Literal`, the `choices`
decorator) and has no public way to set them later (Rapptz/discord.py#7539), so this module
is the one place that edits a loaded command's parameters: each command is the cog's own copy
(`Command._copy_with` copies its parameter dict), so a replaced parameter changes nothing else.
"""

from __future__ import annotations

import dataclasses

from discord import AppCommandOptionType, app_commands

from bot.core.choices import Choices
from generation.errors import OptionError

CHOICE_LIMIT = 25  # Discord's most choices per option
CHOICE_LENGTH = 100  # and the longest a choice's name and value may be
# Options offered only when the presets give them choices: /dialogue's task appears once a
# community adds a second task of the dialogue kind.
OPTIONAL_OPTIONS = frozenset({("dialogue", "task")})


def offer_choices(tree: app_commands.CommandTree, lists: Choices) -> None:
    """Set the choices of every option in `lists` that the tree's commands have; drop an
    `OPTIONAL_OPTIONS` option that has none. Raises `OptionError` for a list over Discord's
    limit, naming the option."""
    for command in tree.walk_commands():
        if not isinstance(command, app_commands.Command):
            continue
        params = command._params  # noqa: SLF001 - see the module's docstring
        for name, param in list(params.items()):
            key = (command.qualified_name, name)
            choices = lists.get(key)
            if choices is None or param.type != AppCommandOptionType.string:
                if key in OPTIONAL_OPTIONS:
                    del params[name]
                continue
            if len(choices) > CHOICE_LIMIT:
                raise OptionError(
                    f"/{key[0]} {name} has {len(choices)} choices; Discord allows at most "
                    f"{CHOICE_LIMIT} (check the presets in MUSE_PRESETS)."
                )
            too_long = [value for value in choices if not 1 <= len(value) <= CHOICE_LENGTH]
            if too_long:
                raise OptionError(
                    f"/{key[0]} {name}: the choice {too_long[0]!r} is not 1 to {CHOICE_LENGTH} "
                    "characters long, as Discord needs (check the presets in MUSE_PRESETS)."
                )
            offered = [app_commands.Choice(name=value, value=value) for value in choices]
            params[name] = dataclasses.replace(param, choices=offered)
