"""Presets are data: a system prompt, a user template with named fields, default sampling.

They live in `generation/tasks/presets.toml`; a community adds or overrides presets with its own
file (`MUSE_PRESETS`). A field may offer choices; each choice brings a hint (`{field_hint}` in the
template) and may change sampling (a long story gets more tokens). A preset's `kind` says which
rules shape its request and its text (`generation.tasks.task_rules`), and the bot asks it (not
the task's name) for what belongs to a kind; `compare` offers a task for two takes. The bot's
choices are built from the loaded presets, so a community file can add a choice or a task of an
existing kind (a screenplay of kind `dialogue`) without code.
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from generation.errors import OptionError
from generation.types import GenerationRequest, Message

BUILTIN_PRESETS = Path(__file__).with_name("presets.toml")
TASKS = ("story", "poem", "dialogue", "describe", "character", "quest", "generate", "chat")
SAMPLING_KEYS = ("temperature", "top_p", "repetition_penalty", "max_new_tokens")
HINT = "_hint"
CHOICE_TEXTS = frozenset({"hint", "examples", "system", "template", "labels"})  # not sampling
# "text": the template's answer as written (or a labelled form's lines); "dialogue": a cast's
# `Name: line` lines (`generation.tasks.dialogue`), which the bot continues, branches and
# exports as a script.
TEXT, DIALOGUE = "text", "dialogue"
KINDS = (TEXT, DIALOGUE)
DIALOGUE_FIELDS = ("characters", "lines")  # what the dialogue rules read


@dataclass(frozen=True, slots=True)
class Choice:
    hint: str
    sampling: dict[str, Any]
    examples: tuple[Message, ...] = ()
    # A choice may bring its own prompts when it asks for a different kind of text (an ad, a
    # news blurb): "" keeps the preset's.
    system: str = ""
    template: str = ""
    labels: tuple[str, ...] = ()  # a labelled form for this choice (see `Preset.labels`)


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    system: str
    template: str
    main_field: str
    defaults: dict[str, str]
    choices: dict[str, dict[str, Choice]]
    sampling: dict[str, Any]
    stop: tuple[str, ...] = ()
    # Few-shot turns (user, assistant, …) between the system prompt and the request: a tiny
    # model follows a shown format far better than a described one.
    examples: tuple[Message, ...] = ()
    # A labelled form ("Name: …", "Look: …"): the answer starts with the first label, and the
    # finished text keeps one line per label, in order (`generation.tasks.forms`).
    labels: tuple[str, ...] = ()
    kind: str = TEXT  # one of KINDS: which task rules shape the request and the text
    # Offered by /compare and /arena: one prompt fills the main field, so every other field
    # needs a default.
    compare: bool = False

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields a user fills, in order of first use (hints are derived, not filled)."""
        names = [
            name
            for text in (self.template, self.system)
            for _, name, _, _ in string.Formatter().parse(text)
            if name and not name.endswith(HINT)
        ]
        return tuple(dict.fromkeys([*names, *self.choices]))

    def resolve(self, values: dict[str, Any]) -> dict[str, str]:
        """Validated field values with defaults applied; raises `OptionError` with the reason."""
        unknown = set(values) - set(self.fields)
        if unknown:
            raise OptionError(
                f"/{self.name} has no option {', '.join(sorted(unknown))}; "
                f"its options are {', '.join(self.fields)}."
            )
        given = {k: str(v).strip() for k, v in values.items() if v is not None}
        merged = {**self.defaults, **{k: v for k, v in given.items() if v}}
        for name in self.fields:
            if not merged.get(name):
                raise OptionError(f"/{self.name} needs {name}.")
            allowed = self.choices.get(name)
            if allowed and merged[name] not in allowed:
                raise OptionError(
                    f"{name} must be one of {', '.join(allowed)}, not {merged[name]!r}."
                )
        return merged

    def render(self, values: dict[str, Any]) -> tuple[Message, ...]:
        """The messages the model sees for `values`."""
        filled = self.resolve(values)
        examples, system, template = self.examples, self.system, self.template
        for name, options in self.choices.items():
            choice = options[filled[name]]
            filled[name + HINT] = choice.hint
            examples = choice.examples or examples
            system, template = choice.system or system, choice.template or template
        system = system.format(**filled).strip()
        user = template.format(**filled).strip()
        head = (Message("system", system),) if system else ()
        return (*head, *examples, Message("user", user))

    def labels_for(self, values: dict[str, Any]) -> tuple[str, ...]:
        """The labelled form `values` ask for: a chosen choice's, else the preset's (or none)."""
        filled = self.resolve(values)
        for name, options in self.choices.items():
            if options[filled[name]].labels:
                return options[filled[name]].labels
        return self.labels

    def request(self, values: dict[str, Any], **overrides: Any) -> GenerationRequest:
        """A `GenerationRequest` from this preset, its choices, then `overrides` (None = keep)."""
        filled = self.resolve(values)
        params = dict(self.sampling)
        for name, options in self.choices.items():
            params.update(options[filled[name]].sampling)
        params.update({k: v for k, v in overrides.items() if v is not None})
        params.setdefault("stop", self.stop)
        labels = self.labels_for(values)
        if labels:
            params.setdefault("response_prefix", f"{labels[0]}:")
            params.setdefault("labels", labels)
        return GenerationRequest(messages=self.render(values), **params)


def kind_of(presets: Mapping[str, Preset], task: str) -> str:
    """The kind of `task` (a stored generation's too); text for a task `presets` no longer
    have."""
    preset = presets.get(task)
    return preset.kind if preset is not None else TEXT


def tasks_of_kind(presets: Mapping[str, Preset], kind: str) -> tuple[str, ...]:
    """The tasks of `kind`, in the presets' order (built-in first, then a community's)."""
    return tuple(name for name, preset in presets.items() if preset.kind == kind)


@cache
def builtin_presets() -> Mapping[str, Preset]:
    """The built-in presets alone (read once): what a caller without the loaded ones falls
    back to."""
    return MappingProxyType(load_presets())


def load_presets(extra: str | Path | None = None) -> dict[str, Preset]:
    """The built-in presets, overridden and extended by `extra` (a TOML file) when given."""
    presets = parse_presets(BUILTIN_PRESETS)
    if extra:
        presets.update(parse_presets(Path(extra)))
    missing = set(TASKS) - set(presets)
    if missing:
        raise OptionError(f"presets are missing the tasks {', '.join(sorted(missing))}.")
    return presets


def parse_presets(path: Path) -> dict[str, Preset]:
    """Every preset in one TOML file, validated."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise OptionError(f"cannot read presets from {path}: {exc}") from exc
    return {name: _preset(path, name, table) for name, table in data.items()}


def _preset(path: Path, name: str, table: Any) -> Preset:
    where = f"{path}: [{name}]"
    if not isinstance(table, dict) or not isinstance(table.get("template"), str):
        raise OptionError(f"{where} needs a template.")
    try:
        choices = {
            field: {
                value: Choice(
                    str(spec.get("hint", "")),
                    {k: v for k, v in spec.items() if k not in CHOICE_TEXTS},
                    _examples(spec.get("examples", [])),
                    str(spec.get("system", "")),
                    str(spec.get("template", "")),
                    tuple(str(label) for label in spec.get("labels", ())),
                )
                for value, spec in options.items()
            }
            for field, options in table.get("choices", {}).items()
        }
        preset = Preset(
            name=name,
            system=str(table.get("system", "")),
            template=table["template"],
            main_field=str(table.get("main_field", "")),
            defaults={k: str(v) for k, v in table.get("defaults", {}).items()},
            choices=choices,
            sampling=dict(table.get("sampling", {})),
            stop=tuple(table.get("stop", ())),
            examples=_examples(table.get("examples", [])),
            labels=tuple(str(label) for label in table.get("labels", ())),
            kind=str(table.get("kind", TEXT)),
            compare=table.get("compare", False),
        )
        fields = preset.fields
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise OptionError(f"{where} is not valid: {exc}") from exc
    if preset.kind not in KINDS:
        raise OptionError(f"{where} kind must be one of {', '.join(KINDS)}, not {preset.kind!r}.")
    if preset.main_field not in fields:
        raise OptionError(f"{where} main_field must name one of its fields {fields}.")
    if preset.kind == DIALOGUE and not set(DIALOGUE_FIELDS) <= set(fields):
        raise OptionError(f"{where} is of kind dialogue: it needs the fields characters and lines.")
    if not isinstance(preset.compare, bool):
        raise OptionError(f"{where} compare must be true or false, not {preset.compare!r}.")
    unfilled = [f for f in fields if f != preset.main_field and f not in preset.defaults]
    if preset.compare and unfilled:
        raise OptionError(
            f"{where} is offered by /compare, where one prompt fills {preset.main_field}: "
            f"{', '.join(unfilled)} need defaults."
        )
    settings = [preset.sampling, *(c.sampling for o in choices.values() for c in o.values())]
    for key in (k for s in settings for k in s):
        if key not in SAMPLING_KEYS:
            raise OptionError(f"{where} has an unknown sampling setting {key!r}.")
    for field, options in choices.items():
        default = preset.defaults.get(field)
        if default is not None and default not in options:
            raise OptionError(f"{where} default {field}={default!r} is not one of its choices.")
    return preset


def _examples(items: list[dict[str, str]]) -> tuple[Message, ...]:
    """`[{user = "…", assistant = "…"}, …]` → alternating messages."""
    turns: list[Message] = []
    for item in items:
        turns += [
            Message("user", item["user"].strip()),
            Message("assistant", item["assistant"].strip()),
        ]
    return tuple(turns)
