"""What users and Discord do to the bot: commands, buttons, modals, messages, gateway trouble."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from .common import Messaging
from .gateway import INVALID_SESSION, RECONNECT, Gateway
from .interactions import (
    APPLICATION_COMMAND,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    InteractionRecord,
    command_data,
    component_data,
    modal_data,
    new_interaction,
)
from .messages import MessageRecord, UploadedFile
from .models import Channel, Guild, User
from .state import EmulatorState


class UserActions:
    """Dispatches INTERACTION_CREATE / MESSAGE_CREATE as a Discord client would cause them."""

    state: EmulatorState
    gateway: Gateway
    messaging: Messaging

    @property
    def guild(self) -> Guild:
        """The first guild."""
        return self.state.guild()

    @property
    def interactions(self) -> list[InteractionRecord]:
        """Every dispatched interaction, oldest first."""
        return list(self.state.interactions.values())

    # --- what users do ------------------------------------------------------------------

    async def slash_command(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        user: User | str = "alice",
        guild: Guild | None = None,
        channel: Channel | str | None = None,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """Dispatch a CHAT_INPUT command (``name`` may be ``"group sub"``), typed as synced."""
        if guild is None and isinstance(channel, Channel):
            guild = self.state.guilds[channel.guild_id]
        guild = guild or self.guild
        where = self.state.channel(channel, guild)
        data = command_data(self.state, name, options or {}, guild)
        who = self.state.user(user)
        record = new_interaction(
            self.state, APPLICATION_COMMAND, data, who, guild, where, locale=locale
        )
        await self._send_interaction(record)
        return record

    async def press_button(
        self,
        message: MessageRecord,
        custom_id: str,
        *,
        user: User | str = "alice",
        values: list[str] | None = None,
    ) -> InteractionRecord:
        """Dispatch a MESSAGE_COMPONENT for a button (or select, with ``values``) on a message."""
        data = component_data(message, custom_id, values)
        channel = self.state.channels[message.channel_id]
        guild = self.state.guilds[channel.guild_id]
        who = self.state.user(user)
        record = new_interaction(
            self.state, MESSAGE_COMPONENT, data, who, guild, channel, message=message
        )
        await self._send_interaction(record)
        return record

    async def submit_modal(
        self,
        modal: InteractionRecord | str,
        fields: Mapping[str, Any],
        *,
        user: User | str | None = None,
    ) -> InteractionRecord:
        """Submit the modal shown in answer to ``modal`` (or the latest one with that custom id)."""
        source = modal if isinstance(modal, InteractionRecord) else self._modal_source(modal)
        if source.modal is None:
            raise ValueError(f"interaction {source.id} showed no modal")
        custom_id = source.modal["custom_id"]
        data = modal_data(custom_id, source.modal, fields)
        channel = self.state.channels[source.channel_id]
        guild = self.state.guilds[source.guild_id]
        message = self.state.messages.get(source.message_id or 0)
        who = source.user if user is None else self.state.user(user)
        record = new_interaction(
            self.state, MODAL_SUBMIT, data, who, guild, channel, message=message
        )
        await self._send_interaction(record)
        return record

    async def send_message(
        self,
        channel: Channel | str | None,
        content: str,
        user: User | str = "alice",
        *,
        files: Sequence[tuple[str, bytes]] = (),
        reply_to: MessageRecord | None = None,
    ) -> MessageRecord:
        """A user posts a message (MESSAGE_CREATE, content hidden without the intent)."""
        where = self.state.channel(channel)
        body: dict[str, Any] = {"content": content}
        if reply_to is not None:
            body["message_reference"] = {
                "message_id": str(reply_to.id),
                "channel_id": str(reply_to.channel_id),
                "guild_id": str(where.guild_id),
            }
        uploads = [UploadedFile(name, data) for name, data in files]
        return await self.messaging.create(
            where,
            self.state.user(user),
            body,
            uploads,
            source="user",
            kind="user",
            type=19 if reply_to else 0,
        )

    # --- gateway control ----------------------------------------------------------------

    async def drop_gateway(self, code: int = 4000, shard_id: int | None = None) -> int:
        """Close the bot's gateway connection(s) with a resumable code; returns how many."""
        return await self.gateway.drop(code, shard_id)

    async def request_reconnect(self, shard_id: int | None = None) -> None:
        """Send op 7 RECONNECT (the client closes and resumes)."""
        await self.gateway.send_op(RECONNECT, None, shard_id)

    async def invalidate_session(self, shard_id: int | None = None) -> None:
        """Send op 9 INVALID_SESSION (not resumable: the client identifies again)."""
        await self.gateway.send_op(INVALID_SESSION, False, shard_id, end_sessions=True)

    def _modal_source(self, custom_id: str) -> InteractionRecord:
        for record in reversed(self.interactions):
            if record.modal is not None and record.modal.get("custom_id") == custom_id:
                return record
        raise LookupError(f"no modal {custom_id!r} was shown")

    async def _send_interaction(self, record: InteractionRecord) -> None:
        record.dispatched_at = time.monotonic()
        record.expires_at = record.dispatched_at + self.state.token_ttl_s
        sent = await self.gateway.dispatch("INTERACTION_CREATE", record.payload, record.guild_id)
        if not sent:
            raise RuntimeError("no gateway session would receive the interaction; is the bot up?")
        self.state.notify()
