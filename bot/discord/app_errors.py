"""The first and last lines of defence for slash commands: option values of the wrong type are
refused before discord.py converts them (a number option holding "abc" would raise inside
discord.py, and the user would see "did not respond"); an exception no handler caught is
logged with an error id, and the user sees a short message instead of "thinking…"."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import discord
from discord import app_commands

from bot.core.errors import report, storage_problem
from bot.discord.context import NO_MENTIONS, answer_ephemeral

log = logging.getLogger("muse.bot.discord.app_errors")
BAD_OPTIONS = (app_commands.CommandSignatureMismatch, app_commands.TransformerError)
OUT_OF_DATE = "Check each option and try again (Discord may still show an older version of it)."


async def on_app_command_error(
    interaction: discord.Interaction, error: app_commands.AppCommandError
) -> None:
    """`CommandTree.on_error`: report `error`, then answer (or replace "thinking…")."""
    name = interaction.command.name if interaction.command else "an interaction"
    if isinstance(error, BAD_OPTIONS):  # what Discord sent does not fit the command
        log.warning("/%s got options it cannot use: %s", name, error)
        text = f"⚠️ /{name} got options it cannot use. {OUT_OF_DATE}"
    else:
        cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        text = report(cause, f"/{name}")
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(
                text, ephemeral=True, allowed_mentions=NO_MENTIONS
            )
        else:
            await interaction.edit_original_response(
                content=text, embeds=[], view=None, allowed_mentions=NO_MENTIONS
            )
    except discord.HTTPException:
        log.warning("could not show the failure of /%s", name)


# Option types (Discord's numbers) and the Python values each may hold.
_KINDS: dict[int, tuple[str, tuple[type, ...]]] = {
    3: ("text", (str,)),
    4: ("a whole number", (int,)),
    5: ("true or false", (bool,)),
    10: ("a number", (int, float)),
}


def wrong_option(options: list[dict[str, Any]]) -> str | None:
    """The first option whose value is not of its declared type, as a message, or None."""
    for option in _leaves(options):
        kind = _KINDS.get(option.get("type", 0))
        if kind is None or option.get("focused"):
            continue
        value = option.get("value")
        is_bool = isinstance(value, bool)
        if not isinstance(value, kind[1]) or (is_bool and option["type"] != 5):
            return f"⚠️ {option.get('name')} must be {kind[0]}, not {str(value)[:40]!r}."
    return None


def _leaves(options: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for option in options:
        if option.get("type") in (1, 2):  # a subcommand (group): its options
            yield from _leaves(option.get("options") or [])
        else:
            yield option


async def check_option_types(interaction: discord.Interaction) -> bool:
    """`CommandTree.interaction_check`: refuse values a client would never send."""
    data = interaction.data or {}
    problem = wrong_option(list(data.get("options") or []))  # type: ignore[arg-type]
    if problem is None:
        return True
    log.warning("refused a command with a mistyped option: %s", problem)
    await interaction.response.send_message(problem, ephemeral=True, allowed_mentions=NO_MENTIONS)
    return False


async def answer_failure(
    interaction: discord.Interaction, exc: BaseException, context: str
) -> None:
    """Tell the user an interaction failed (ephemeral, or in place of "thinking…"): what is
    wrong with the database when that is the cause, else the error id of the log line."""
    problem = storage_problem(exc)
    if problem is not None:
        log.error("%s: %s (%s)", context, problem, exc)
        text = f"⚠️ Muse could not save that: {problem}. Please try again later."
    else:
        text = report(exc, context)
    try:
        await answer_ephemeral(interaction, text)
    except discord.HTTPException:
        log.warning("could not show the failure of %s", context)
