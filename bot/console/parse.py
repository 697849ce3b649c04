"""Console mode's command lines, as pure functions: parse, validate, rating keys, /help.

    /dialogue scene="a tavern" characters="Innkeeper, Stranger" lines=4
    /story a dragon                     (bare text fills the command's main option)

Options are validated with the bot's rules (docs/commands.md's table): the same ranges,
choices and lengths, so a line the console accepts is one Discord would accept. The choices
come from the loaded presets (`commands_for`), as Discord's do.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from bot.core.actions import parse_stars
from bot.core.choices import option_choices
from bot.core.policy import check_range
from generation.errors import OptionError
from generation.tasks.presets import Preset, builtin_presets

TEXT_LIMIT = 1000  # Discord's Range[str, 1, 1000] on the main text options
COMMENT_LIMIT = 1000  # the ⭐ modal's comment box
_OPTION = re.compile(r"^([A-Za-z][A-Za-z_-]*)=(.*)$", re.DOTALL)


class ConsoleError(ValueError):
    """A line the console refuses; the message says why (and what would work)."""


@dataclass(frozen=True, slots=True)
class Option:
    """One option: its kind and the limits the bot enforces."""

    name: str
    help: str
    kind: Literal["text", "int", "float", "choice"] = "text"
    required: bool = False
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()

    def usage(self) -> str:
        if self.kind == "choice":
            shape = "|".join(self.choices)
        elif self.kind in ("int", "float"):
            shape = f"{self.low:g}–{self.high:g}"
        else:
            shape = "…"
        return f"{self.name}={shape}" if self.required else f"[{self.name}={shape}]"


@dataclass(frozen=True, slots=True)
class Command:
    """A console command: what it does, its options, and which one bare text fills."""

    name: str
    help: str
    options: tuple[Option, ...] = ()
    main: str | None = None

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)


def _text(name: str, help: str, required: bool = True, high: int = TEXT_LIMIT) -> Option:
    return Option(name, help, "text", required, 1, high)


# The commands as written; a choice option's choices (empty here) come from the presets.
_COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "story",
            "a short story",
            (
                _text("prompt", "what the story is about"),
                Option("length", "how long", "choice"),
            ),
            "prompt",
        ),
        Command(
            "poem",
            "a poem",
            (
                _text("topic", "what the poem is about"),
                Option("form", "its form", "choice"),
            ),
            "topic",
        ),
        Command(
            "dialogue",
            "NPC dialogue, shown as `Name: line`",
            (
                _text("scene", "where and what is happening"),
                _text("characters", "who speaks, comma-separated"),
                Option("lines", "how many lines", "int", low=2, high=20),
                _text("tone", "the mood", required=False, high=100),
                Option("task", "which kind of dialogue (default dialogue)", "choice"),
            ),
            "scene",
        ),
        Command(
            "describe",
            "product / marketing copy, an ad, a social-media post or a news blurb",
            (
                _text("product", "the product"),
                _text("audience", "who it is for", required=False, high=200),
                Option("kind", "which text", "choice"),
            ),
            "product",
        ),
        Command(
            "character",
            "a game character: name, look, voice, motive, a secret",
            (
                _text("concept", "who the character is"),
                _text("setting", "the game's world", required=False, high=200),
            ),
            "concept",
        ),
        Command(
            "quest",
            "a quest hook: giver, goal, obstacle, twist, reward",
            (
                _text("premise", "what the quest is about"),
                _text("setting", "the game's world", required=False, high=200),
            ),
            "premise",
        ),
        Command(
            "generate",
            "a free prompt",
            (
                _text("prompt", "anything to write"),
                Option("temperature", "randomness", "float", low=0.0, high=2.0),
                Option("max_tokens", "the most tokens to write", "int", low=16, high=1024),
            ),
            "prompt",
        ),
        Command(
            "chat",
            "a running conversation for this console session",
            (_text("message", "what you say"),),
            "message",
        ),
        Command(
            "compare",
            "two takes, A and B: vote with a / b / t",
            (
                _text("prompt", "what to write about"),
                Option("task", "which kind of text (default generate)", "choice"),
            ),
            "prompt",
        ),
        Command(
            "arena",
            "two different models, blind, A and B: vote with a / b / t; the vote reveals them",
            (
                _text("prompt", "what to write about"),
                Option("task", "which kind of text (default generate)", "choice"),
            ),
            "prompt",
        ),
        Command(
            "history",
            "your recent generations",
            (Option("count", "how many", "int", low=1, high=25),),
            "count",
        ),
        Command(
            "privacy",
            "what Muse keeps about you; training=deny opts out of training exports",
            (Option("training", "allow or deny", "choice", choices=("allow", "deny")),),
            "training",
        ),
        Command("forget", "delete all your data (asks y/N first)"),
        Command("stats", "the console's rating summary"),
        Command(
            "loop",
            "the learning loop's status (`/loop status`; it runs where Muse runs in Discord)",
            (_text("action", "status", required=False, high=20),),
            "action",
        ),
        Command("help", "this list"),
        Command("quit", "leave (Ctrl-D and Ctrl-C too)"),
    )
}
ALIASES = {"exit": "quit", "q": "quit", "?": "help"}


def commands_for(presets: Mapping[str, Preset]) -> dict[str, Command]:
    """The commands with the presets' choices (`bot.core.choices`); a choice option the presets
    give no choices (/dialogue's task while there is one dialogue task) is not offered."""
    lists = option_choices(presets)
    commands = {}
    for name, command in _COMMANDS.items():
        options = []
        for option in command.options:
            if option.kind == "choice" and not option.choices:
                choices = lists.get((name, option.name))
                if choices is None:
                    continue
                option = replace(option, choices=choices)
            options.append(option)
        commands[name] = replace(command, options=tuple(options))
    return commands


COMMANDS = commands_for(builtin_presets())  # the built-in presets' (a session uses its own)


@dataclass(frozen=True, slots=True)
class Parsed:
    """A validated command line: the command and its typed option values."""

    command: str
    values: dict[str, str | int | float] = field(default_factory=dict)


def parse_line(line: str, commands: Mapping[str, Command] = COMMANDS) -> Parsed | None:
    """A validated command of `commands` (`commands_for` the session's presets), or None for
    a blank line; raises `ConsoleError` with the reason."""
    line = line.strip()
    if not line:
        return None
    if not line.startswith("/"):
        raise ConsoleError("commands start with / (e.g. /story a dragon) — try /help")
    try:
        words = shlex.split(line[1:])
    except ValueError as exc:
        raise ConsoleError(f"could not read that line: {exc} — check the quotes") from None
    name = words[0].lower() if words else ""
    name = ALIASES.get(name, name)
    command = commands.get(name)
    if command is None:
        raise ConsoleError(unknown_command(name, commands))
    raw, text = split_words(command, words[1:])
    if text:
        if command.main is None:
            raise ConsoleError(f"/{name} takes no text (got {text!r}).")
        if command.main in raw:
            raise ConsoleError(f"{command.main} is given twice: as text and as {command.main}=.")
        raw[command.main] = text
    return Parsed(name, validate(command, raw))


def unknown_command(name: str, commands: Mapping[str, Command] = COMMANDS) -> str:
    """`unknown command /x — try /help`, with the closest command when there is one."""
    close = difflib.get_close_matches(name, [*commands, *ALIASES], n=1, cutoff=0.5)
    hint = f" (did you mean /{ALIASES.get(close[0], close[0])}?)" if close else ""
    return f"unknown command /{name} — try /help{hint}"


def split_words(command: Command, words: list[str]) -> tuple[dict[str, str], str]:
    """`key=value` words as options (unknown names refused), the other words joined as text."""
    options: dict[str, str] = {}
    text: list[str] = []
    for word in words:
        match = _OPTION.match(word)
        if match is None:
            text.append(word)
            continue
        key = match[1].lower().replace("-", "_")
        if command.option(key) is None:
            valid = ", ".join(o.name for o in command.options)
            where = f"its options are {valid}" if valid else "it takes no options"
            raise ConsoleError(f"/{command.name} has no option {key}; {where}.")
        if key in options:
            raise ConsoleError(f"{key} is given twice.")
        options[key] = match[2]
    return options, " ".join(text).strip()


def validate(command: Command, raw: dict[str, str]) -> dict[str, str | int | float]:
    """Typed values, checked as the bot checks them; raises `ConsoleError` naming the problem."""
    values: dict[str, str | int | float] = {}
    for option in command.options:
        given = raw.get(option.name)
        if given is None:
            if option.required:
                raise ConsoleError(f"/{command.name} needs {option.name} ({option.usage()}).")
            continue
        values[option.name] = convert(option, given.strip())
    if "characters" in values and not str(values["characters"]).strip(" ,"):
        raise ConsoleError("characters needs at least one name.")
    return values


def convert(option: Option, text: str) -> str | int | float:
    """One option's value, of its kind and within its limits."""
    name = option.name
    if option.kind == "choice":
        if text not in option.choices:
            raise ConsoleError(f"{name} must be one of {', '.join(option.choices)}, not {text!r}.")
        return text
    if option.kind == "text":
        if not text:
            raise ConsoleError(f"{name} cannot be empty.")
        if option.high is not None and len(text) > option.high:
            raise ConsoleError(
                f"{name} must be at most {option.high:g} characters (got {len(text)})."
            )
        return text
    try:
        number: int | float = int(text) if option.kind == "int" else float(text)
    except ValueError:
        kind = "a whole number" if option.kind == "int" else "a number"
        raise ConsoleError(f"{name} must be {kind}, not {text!r}.") from None
    try:
        check_range(name, number, option.low or 0.0, option.high or 0.0)
    except OptionError as exc:
        raise ConsoleError(str(exc)) from None
    return number


@dataclass(frozen=True, slots=True)
class Key:
    """A key typed after a generation: a rating, regenerate, skip, or a vote."""

    action: Literal[
        "up", "down", "stars", "regenerate", "edit", "continue", "skip", "A", "B", "tie"
    ]
    stars: int | None = None
    comment: str | None = None


RATE_KEYS = "[u]p [d]own [1-5] stars [r]egenerate [e]dit [c]ontinue [s]kip"
VOTE_KEYS = "[a] A is better [b] B is better [t]ie [s]kip"
_WORDS = {
    "u": "up", "up": "up", "+": "up", "d": "down", "down": "down", "-": "down",
    "r": "regenerate", "regenerate": "regenerate", "s": "skip", "skip": "skip", "": "skip",
    "e": "edit", "edit": "edit", "c": "continue", "continue": "continue",
}  # fmt: skip
_VOTES = {"a": "A", "b": "B", "t": "tie", "tie": "tie", "s": "skip", "skip": "skip", "": "skip"}


def parse_rating(line: str) -> Key | None:
    """`u`, `d`, `4` or `4 nice one`, `r`, `s`/empty → a `Key`; anything else → None."""
    text = line.strip()
    head, _, rest = text.partition(" ")
    stars = parse_stars(head) if head else None
    if stars is not None:
        comment = rest.strip()[:COMMENT_LIMIT] or None
        return Key("stars", stars, comment)
    action = _WORDS.get(text.lower())
    return Key(action) if action else None  # type: ignore[arg-type]


def parse_vote(line: str) -> Key | None:
    """`a`, `b`, `t`, `s`/empty → a `Key`; anything else → None."""
    action = _VOTES.get(line.strip().lower())
    return Key(action) if action else None  # type: ignore[arg-type]


def help_text(commands: Mapping[str, Command] = COMMANDS) -> str:
    """Every command with its options (and their choices), then the keys and where the data
    goes."""
    lines = ["Commands (bare text after a command fills its first option):"]
    for command in commands.values():
        usage = " ".join(o.usage() for o in command.options)
        lines.append(f"  /{command.name} {usage}".rstrip())
        lines.append(f"      {command.help}")
    lines += [
        "",
        f"After a text: {RATE_KEYS} — `4 nice one` gives 4 stars with a comment;",
        "a line starting with / runs the next command. After /compare: " + VOTE_KEYS + ".",
        "Console rows are stored as user 0 in guild 0 (MUSE_DB); `muse export --guild 0`.",
        "/chat keeps its history in the database (a conversation per console session).",
    ]
    return "\n".join(lines)
