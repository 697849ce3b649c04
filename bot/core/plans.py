"""What to generate: a `Plan` from a preset and a guild's defaults, and the plans that follow
an earlier generation (🔁 a new take, ▶ more lines, 🔀 another next line)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from bot.core import scenes
from bot.core.app import Muse
from bot.core.personas import with_persona
from bot.core.policy import Admission
from generation.errors import OptionError
from generation.tasks.presets import DIALOGUE
from generation.tasks.task_rules import build_request
from generation.types import GenerationRequest, Message
from storage.rows import Generation, GuildSettings, Persona


@dataclass(frozen=True, slots=True)
class Plan:
    """The task, its fields, the request, and the generation it follows."""

    task: str
    fields: dict[str, Any]
    request: GenerationRequest
    parent_id: int | None = None
    finish_fields: dict[str, Any] = field(default_factory=dict)
    conversation_id: int | None = None
    blocklist: tuple[str, ...] = ()  # the guild's: an output that hits it is withheld
    persona: str | None = None  # the channel persona's name, when one applied

    @property
    def shown_fields(self) -> dict[str, Any]:
        return self.finish_fields or self.fields


def make_plan(
    app: Muse,
    user_id: int,
    task: str,
    fields: dict[str, Any],
    parent_id: int | None = None,
    *,
    guild: GuildSettings | None = None,
    persona: Persona | None = None,
    model: str | None = None,
    **overrides: Any,
) -> Plan:
    """A plan from a preset (the guild's temperature / max_tokens as defaults, the channel's
    persona in the system prompt); raises `OptionError` for bad fields."""
    preset = app.presets.get(task)
    if preset is None:  # a stored generation's task that a changed MUSE_PRESETS dropped
        raise OptionError(f"/{task} is not offered here any more.")
    if guild is not None:
        if overrides.get("temperature") is None and guild.temperature is not None:
            overrides["temperature"] = guild.temperature
        if overrides.get("max_new_tokens") is None and guild.max_tokens:
            overrides["max_new_tokens"] = guild.max_tokens
    preset.resolve(fields)
    request = build_request(
        preset, fields, timeout_s=app.settings.timeout_s, user_key=str(user_id), **overrides
    )
    if request.max_new_tokens > app.settings.max_tokens:
        request = replace(request, max_new_tokens=app.settings.max_tokens)
    if persona is not None:
        request = with_persona(request, persona, task)
    if model is not None:
        request = replace(request, model=model)
    blocklist = guild.blocklist if guild else ()
    name = persona.name if persona else None
    return Plan(task, fields, request, parent_id, blocklist=blocklist, persona=name)


def inherited(plan: Plan, parent: Generation) -> Plan:
    """A follow-up keeps its parent's persona (the copied messages already speak as it) and
    the model that wrote it."""
    model = parent.params.get("model") or None
    return replace(
        plan,
        request=replace(plan.request, model=model),
        persona=parent.params.get("persona") or None,
    )


def admitted_plan(
    app: Muse, admission: Admission, user_id: int, task: str, fields: dict[str, Any], **kw: Any
) -> Plan:
    """`make_plan` with what the admission found: the guild's settings, the channel's persona,
    the guild's default model."""
    return make_plan(
        app,
        user_id,
        task,
        fields,
        guild=admission.settings,
        persona=admission.persona,
        model=admission.model,
        **kw,
    )


def stored_messages(generation: Generation) -> tuple[Message, ...]:
    """The messages a generation sent to the model, as the engine takes them."""
    return tuple(Message(m["role"], m["content"]) for m in generation.messages)  # type: ignore[arg-type]


def regenerate_plan(
    app: Muse, parent: Generation, user_id: int, guild: GuildSettings | None = None
) -> Plan:
    """🔁: the parent's messages with a new seed, linked to it, belonging to `user_id`."""
    params = parent.params
    plan = make_plan(
        app,
        user_id,
        parent.task,
        parent.fields,
        parent_id=parent.id,
        guild=guild,
        temperature=params.get("temperature"),
        max_new_tokens=params.get("max_new_tokens"),
    )
    request = replace(
        plan.request,
        messages=stored_messages(parent),
        response_prefix=str(params.get("response_prefix") or ""),
    )
    return inherited(replace(plan, request=request), parent)


def scene_plan(
    app: Muse, parent: Generation, user_id: int, guild: GuildSettings | None, *, branch: bool
) -> Plan:
    """▶ (more lines) or 🔀 (an alternative next line) of a dialogue, linked to the parent."""
    lines = scenes.default_lines(app.presets, parent.task)
    fields, messages, prefix = scenes.follow_up(parent, branch=branch, default_lines=lines)
    plan = make_plan(app, user_id, parent.task, fields, parent.id, guild=guild)
    request = replace(plan.request, messages=messages, response_prefix=prefix)
    return inherited(replace(plan, request=request), parent)


def continue_plan(
    app: Muse, parent: Generation, user_id: int, guild: GuildSettings | None = None
) -> Plan:
    """▶ on a text the token limit cut: the same prompt, the text so far as the answer's start,
    so the new reply is the whole text, written on."""
    plan = regenerate_plan(app, parent, user_id, guild)
    request = replace(plan.request, response_prefix=(parent.output or "").rstrip() + " ")
    return replace(plan, request=request)


def continuation(
    app: Muse, parent: Generation, user_id: int, guild: GuildSettings | None = None
) -> Plan:
    """▶: a dialogue's next lines, or any other text written on from where it stopped."""
    if app.kind_of(parent.task) == DIALOGUE:
        return scene_plan(app, parent, user_id, guild, branch=False)
    return continue_plan(app, parent, user_id, guild)


def second_take(plan: Plan) -> Plan:
    """/compare's B: the same plan with the next seed and its own request id."""
    request = plan.request
    return replace(
        plan, request=replace(request, seed=request.seed + 1, request_id=request.request_id + "b")
    )
