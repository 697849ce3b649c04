"""Interaction records and the INTERACTION_CREATE payloads for slash commands, buttons, modals."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .messages import MessageRecord
from .models import Channel, Guild, Role, User
from .state import EmulatorState

APPLICATION_COMMAND, MESSAGE_COMPONENT, MODAL_SUBMIT = 2, 3, 5
SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER = 3, 4, 5, 6, 7, 8, 9, 10
_SELECTS = (3, 5, 6, 7, 8, 19, 22)


@dataclass
class InteractionRecord:
    """One dispatched interaction and everything the bot did with it."""

    id: int
    token: str
    type: int
    user: User
    guild_id: int
    channel_id: int
    payload: dict[str, Any]
    state: EmulatorState = field(repr=False)
    dispatched_at: float = field(default_factory=time.monotonic)
    expires_at: float = 0.0
    message_id: int | None = None  # the message a component sits on
    callback_type: int | None = None
    callback_at: float | None = None
    callback_data: dict[str, Any] | None = None
    original: MessageRecord | None = None
    followups: list[MessageRecord] = field(default_factory=list)
    modal: dict[str, Any] | None = None
    errors: list[tuple[str, int, int]] = field(default_factory=list)  # (request, status, code)
    last_activity: float = field(default_factory=time.monotonic)

    @property
    def callback_ms(self) -> float | None:
        """Milliseconds from dispatch to the interaction callback."""
        if self.callback_at is None:
            return None
        return (self.callback_at - self.dispatched_at) * 1000

    @property
    def acknowledged(self) -> bool:
        """Whether the bot answered the callback."""
        return self.callback_type is not None

    @property
    def deferred(self) -> bool:
        """Whether the answer was a defer (5 or 6)."""
        return self.callback_type in (5, 6)

    @property
    def expired(self) -> bool:
        """Whether the interaction token is no longer valid."""
        return time.monotonic() >= self.expires_at

    @property
    def messages(self) -> list[MessageRecord]:
        """The original response (if any) then the followups."""
        return ([self.original] if self.original else []) + self.followups

    def expire(self) -> None:
        """Make the token invalid now, as 15 minutes later on Discord."""
        self.expires_at = time.monotonic()
        self.state.notify()

    async def wait_callback(self, timeout: float = 5.0) -> InteractionRecord:  # noqa: ASYNC109
        """Wait until the bot answers the interaction callback."""
        await self.state.wait_for(lambda: self.acknowledged, timeout, f"callback of {self.id}")
        return self

    async def wait_until(
        self,
        predicate: Callable[[InteractionRecord], Any],
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> InteractionRecord:
        """Wait until ``predicate(self)`` holds."""
        await self.state.wait_for(lambda: predicate(self), timeout, f"interaction {self.id}")
        return self

    async def wait_finished(
        self,
        timeout: float = 10.0,  # noqa: ASYNC109
        quiet_s: float = 0.3,
    ) -> InteractionRecord:
        """Wait until answered, not "thinking…", and no request on its token for ``quiet_s``."""

        def done() -> bool:
            if not self.acknowledged or (self.original is not None and self.original.loading):
                return False
            return time.monotonic() - self.last_activity >= quiet_s

        await self.state.wait_for(done, timeout, f"interaction {self.id} to finish")
        return self

    def touch(self) -> None:
        """Note activity on the token."""
        self.last_activity = time.monotonic()
        self.state.notify()


def new_interaction(
    state: EmulatorState,
    kind: int,
    data: dict[str, Any],
    user: User,
    guild: Guild,
    channel: Channel,
    *,
    locale: str = "en-US",
    message: MessageRecord | None = None,
) -> InteractionRecord:
    """Build and register an interaction record with its INTERACTION_CREATE payload."""
    interaction_id = state.ids.next()
    token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48)
    payload: dict[str, Any] = {
        "id": str(interaction_id),
        "application_id": str(state.application_id),
        "type": kind,
        "data": data,
        "guild_id": str(guild.id),
        "guild": {"id": str(guild.id), "locale": guild.locale, "features": []},
        "guild_locale": guild.locale,
        "channel_id": str(channel.id),
        "channel": channel.payload() | {"permissions": str(guild.permissions(user.id))},
        "member": guild.members[user.id].payload(guild.permissions(user.id)),
        "token": token,
        "version": 1,
        "app_permissions": str(guild.permissions(state.bot_user.id)),
        "locale": locale,
        "entitlements": [],
        "entitlement_sku_ids": [],
        "authorizing_integration_owners": {"0": str(guild.id)},
        "context": 0,
        "attachment_size_limit": 10 * 1024 * 1024,
    }
    if message is not None:
        payload["message"] = message.payload()
    record = InteractionRecord(
        id=interaction_id,
        token=token,
        type=kind,
        user=user,
        guild_id=guild.id,
        channel_id=channel.id,
        payload=payload,
        state=state,
        message_id=None if message is None else message.id,
    )
    record.expires_at = record.dispatched_at + state.token_ttl_s
    state.interactions[interaction_id] = record
    state.tokens[token] = record
    return record


def command_data(
    state: EmulatorState, name: str, options: Mapping[str, Any], guild: Guild
) -> dict[str, Any]:
    """``data`` of a CHAT_INPUT interaction; options typed from the synced definition."""
    path = name.split()
    command = state.find_command(path[0], guild.id)
    resolved: dict[str, dict[str, Any]] = {}
    defs: list[dict[str, Any]] = command.get("options") or []
    nested: list[dict[str, Any]] = []
    top = nested
    for part in path[1:]:
        sub = _option_def(defs, part, path[0])
        if sub.get("type") not in (SUB_COMMAND, SUB_COMMAND_GROUP):
            raise ValueError(f"{part!r} is not a subcommand of /{path[0]}")
        entry: dict[str, Any] = {"type": sub["type"], "name": part, "options": []}
        nested.append(entry)
        nested, defs = entry["options"], sub.get("options") or []
    for key, value in options.items():
        if value is None:  # an optional option left out
            continue
        spec = _option_def(defs, key, name)
        nested.append(_typed_option(state, spec, value, guild, resolved))
    data: dict[str, Any] = {
        "id": command["id"],
        "name": path[0],
        "type": 1,
        "options": top,
    }
    if command.get("guild_id"):
        data["guild_id"] = command["guild_id"]
    if resolved:
        data["resolved"] = resolved
    return data


def _option_def(defs: list[dict[str, Any]], name: str, command: str) -> dict[str, Any]:
    for spec in defs:
        if spec["name"] == name:
            return spec
    known = ", ".join(s["name"] for s in defs) or "none"
    raise ValueError(f"/{command} has no option {name!r} (options: {known})")


def _typed_option(
    state: EmulatorState,
    spec: dict[str, Any],
    value: Any,
    guild: Guild,
    resolved: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """One option with the type of its definition; a value that won't convert is sent raw."""
    kind = spec["type"]
    converters: dict[int, Callable[[Any], Any]] = {STRING: str, INTEGER: int, NUMBER: float}
    try:
        if kind in converters:
            value = converters[kind](value)
        elif kind == BOOLEAN:
            value = bool(value)
    except (TypeError, ValueError):
        pass
    if kind in (USER, MENTIONABLE) and not isinstance(value, Role):
        user = state.user(value)
        resolved.setdefault("users", {})[str(user.id)] = user.payload()
        if user.id in guild.members:
            member = guild.members[user.id].payload(guild.permissions(user.id))
            member.pop("user")
            resolved.setdefault("members", {})[str(user.id)] = member
        value = str(user.id)
    elif kind in (ROLE, MENTIONABLE):
        role = value if isinstance(value, Role) else guild.roles[int(value)]
        resolved.setdefault("roles", {})[str(role.id)] = role.payload()
        value = str(role.id)
    elif kind == CHANNEL:
        channel = state.channel(value, guild)
        resolved.setdefault("channels", {})[str(channel.id)] = channel.payload() | {
            "permissions": str(guild.permissions(state.bot_user.id))
        }
        value = str(channel.id)
    return {"type": kind, "name": spec["name"], "value": value}


def component_data(
    message: MessageRecord, custom_id: str, values: list[str] | None
) -> dict[str, Any]:
    """``data`` of a MESSAGE_COMPONENT interaction; the component must be on the message."""
    found = _find_component(message.components, custom_id)
    if found is None:
        raise ValueError(f"message {message.id} has no component {custom_id!r}")
    if found.get("disabled"):
        raise ValueError(f"component {custom_id!r} is disabled (a client cannot press it)")
    data: dict[str, Any] = {"custom_id": custom_id, "component_type": found["type"]}
    if values is not None or found["type"] != 2:
        data["values"] = list(values or [])
    return data


def _find_component(items: list[dict[str, Any]], custom_id: str) -> dict[str, Any] | None:
    for item in items:
        if item.get("custom_id") == custom_id:
            return item
        inner = list(item.get("components", []))
        if "accessory" in item:
            inner.append(item["accessory"])
        found = _find_component(inner, custom_id)
        if found is not None:
            return found
    return None


def modal_data(
    custom_id: str, shown: dict[str, Any] | None, fields: Mapping[str, Any]
) -> dict[str, Any]:
    """``data`` of a MODAL_SUBMIT mirroring the modal shown (action rows or Label, type 18).

    ``fields`` maps a component's custom id (or its label) to the value typed or chosen.
    """
    remaining = dict(fields)
    if shown is None:
        rows = [
            {"type": 1, "components": [{"type": 4, "custom_id": k, "value": str(v)}]}
            for k, v in fields.items()
        ]
        return {"custom_id": custom_id, "components": rows}

    def submit(component: dict[str, Any], label: str | None) -> dict[str, Any]:
        kind, cid = component["type"], component.get("custom_id")
        key = cid if cid in remaining else label if label in remaining else None
        given = remaining.pop(key) if key is not None else None
        out: dict[str, Any] = {"type": kind, "custom_id": cid}
        if "id" in component:
            out["id"] = component["id"]
        if kind == 4:
            out["value"] = str(given if given is not None else component.get("value") or "")
        elif kind in _SELECTS:
            out["values"] = [str(v) for v in given or []]
        elif kind == 21:
            out["value"] = given
        elif kind == 23:
            out["value"] = bool(given)
        return out

    components: list[dict[str, Any]] = []
    for top in shown.get("components", []):
        if top["type"] == 1:
            row = [submit(c, c.get("label")) for c in top.get("components", [])]
            components.append({"type": 1, "components": row})
        elif top["type"] == 18:
            inner = submit(top["component"], top.get("label"))
            components.append({"type": 18, "component": inner})
        else:
            components.append({"type": top["type"]} | ({"id": top["id"]} if "id" in top else {}))
    if remaining:
        raise ValueError(f"modal {custom_id!r} has no field(s) {sorted(remaining)}")
    return {"custom_id": custom_id, "components": components}
