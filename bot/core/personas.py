"""A channel's persona: a name and instructions added to the system prompt of every generation
in that channel (`/chat` speaks as the persona instead of as Muse)."""

from __future__ import annotations

from dataclasses import replace

from generation.types import GenerationRequest, Message
from storage.rows import Persona

NAME_LIMIT = 80
PROMPT_LIMIT = 1000


def persona_system(persona: Persona, task: str, system: str) -> str:
    """The system prompt of a `task` generation in the persona's channel: `/chat` becomes the
    persona; any other task keeps its instructions and writes in the persona's voice."""
    speaks = f"You are {persona.name}. {persona.prompt.strip()}"
    if task == "chat" or not system:
        return speaks
    return f"{system}\n\n{speaks} Write in that voice."


def with_persona(request: GenerationRequest, persona: Persona, task: str) -> GenerationRequest:
    """`request` with the persona in its system prompt (one is added when it has none)."""
    messages = list(request.messages)
    if messages and messages[0].role == "system":
        messages[0] = Message("system", persona_system(persona, task, messages[0].content))
    else:
        messages.insert(0, Message("system", persona_system(persona, task, "")))
    return replace(request, messages=tuple(messages))


def problem_with(name: str, prompt: str) -> str | None:
    """Why a persona cannot be saved as given, or None."""
    if not name.strip() or not prompt.strip():
        return "A persona needs a name and a prompt."
    if len(name) > NAME_LIMIT:
        return f"A persona's name can be at most {NAME_LIMIT} characters."
    if len(prompt) > PROMPT_LIMIT:
        return f"A persona's prompt can be at most {PROMPT_LIMIT:,} characters."
    return None


def describe_persona(persona: Persona | None) -> str:
    """What `/persona` with no option shows."""
    if persona is None:
        return (
            "This channel has no persona. Set one with `/persona name:… prompt:…` (Manage "
            "Server): every text written here then speaks as it."
        )
    return f"**Persona in <#{persona.channel_id}>: {persona.name}**\n{persona.prompt}"
