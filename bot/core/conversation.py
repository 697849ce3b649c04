"""/chat conversations: the messages a turn sends to the model (the system prompt, the newest
earlier turns that fit the context, then the new message)."""

from __future__ import annotations

from dataclasses import replace

from bot.core.app import Muse
from bot.core.plans import Plan, admitted_plan, make_plan
from bot.core.policy import Admission
from generation.types import Message
from storage.store import approximate_tokens

CONTEXT_CAP = 2048  # tokens of context a turn may use, whatever the model allows


def context_tokens(app: Muse) -> int:
    """The model's context length (capped), or the cap when the engine does not say."""
    size = app.engine.context_tokens
    return min(int(size), CONTEXT_CAP) if size else CONTEXT_CAP


async def chat_plan(
    app: Muse,
    user_id: int,
    message: str,
    conversation_id: int,
    admission: Admission | None = None,
) -> Plan:
    """A /chat turn: the system prompt (the channel persona's, when it has one), the newest
    earlier turns that fit, then `message`. Without an admission (the console): the defaults."""
    fields = {"message": message}
    if admission is None:
        plan = make_plan(app, user_id, "chat", fields)
    else:
        plan = admitted_plan(app, admission, user_id, "chat", fields)
    head = plan.request.messages
    used = sum(approximate_tokens(m.content) for m in head)
    budget = context_tokens(app) - plan.request.max_new_tokens - used
    history = await app.store.conversation_history(conversation_id, budget) if budget > 0 else []
    turns = tuple(Message(m["role"], m["content"]) for m in history)  # type: ignore[arg-type]
    messages = (*head[:-1], *turns, head[-1])
    request = replace(plan.request, messages=messages)
    return replace(plan, request=request, conversation_id=conversation_id)
