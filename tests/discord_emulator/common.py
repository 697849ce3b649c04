"""Shared REST pieces: Discord-shaped JSON answers, request bodies, and message bookkeeping."""

from __future__ import annotations

import json
import mimetypes
import re
from typing import Any

from aiohttp import web

from .gateway import GUILD_MESSAGES, Gateway
from .messages import LOADING, MessageRecord, UploadedFile, apply_body
from .models import Channel, User, iso_now
from .state import EmulatorState

_MENTION = re.compile(r"<@!?(\d+)>")


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON answer whose Content-Type is exactly ``application/json`` (discord.py checks)."""
    body = json.dumps(data, separators=(",", ":")).encode()
    return web.Response(
        body=body, status=status, headers={"Content-Type": "application/json", **(headers or {})}
    )


def no_content() -> web.Response:
    """204, as Discord answers deletes."""
    return web.Response(status=204)


def discord_error(
    status: int, message: str, code: int, errors: dict[str, Any] | None = None
) -> web.Response:
    """An error body as Discord writes it."""
    body: dict[str, Any] = {"message": message, "code": code}
    if errors:
        body["errors"] = errors
    return json_response(body, status)


def invalid_form(field: str, message: str) -> web.Response:
    """400 Invalid Form Body (50035) for one field."""
    errors = {field: {"_errors": [{"code": "BASE_TYPE_INVALID", "message": message}]}}
    return discord_error(400, "Invalid Form Body", 50035, errors)


async def read_body(request: web.Request) -> tuple[dict[str, Any], list[UploadedFile]]:
    """A JSON body, or a multipart one (``payload_json`` plus ``files[n]``)."""
    if request.content_type == "multipart/form-data":
        form = await request.post()
        body = json.loads(str(form.get("payload_json") or "{}"))
        files: list[tuple[int, UploadedFile]] = []
        for name, value in form.items():
            match = re.fullmatch(r"files\[(\d+)\]", name)
            if match and isinstance(value, web.FileField):
                files.append((int(match[1]), _uploaded(value)))
        return body, [f for _, f in sorted(files, key=lambda item: item[0])]
    if not request.can_read_body:
        return {}, []
    return await request.json(), []


def _uploaded(field: web.FileField) -> UploadedFile:
    content_type = field.content_type
    if content_type in (None, "application/octet-stream"):
        content_type = mimetypes.guess_type(field.filename)[0] or content_type
    return UploadedFile(field.filename, field.file.read(), content_type)


class Messaging:
    """Creates, edits and deletes messages, and sends the gateway events Discord would."""

    def __init__(self, state: EmulatorState, gateway: Gateway) -> None:
        self.state = state
        self.gateway = gateway

    @property
    def attachment_url(self) -> str:
        """Where attachments are served."""
        return f"{self.state.base_url}/attachments"

    async def create(
        self,
        channel: Channel,
        author: User,
        body: dict[str, Any],
        files: list[UploadedFile],
        *,
        source: str,
        kind: str = "channel",
        type: int = 0,
        webhook: bool = False,
        interaction_metadata: dict[str, Any] | None = None,
        flags: int | None = None,
    ) -> MessageRecord:
        """Store a new message and dispatch MESSAGE_CREATE unless it is ephemeral."""
        message = MessageRecord(
            id=self.state.ids.next(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author=author,
            kind=kind,
            type=type,
            webhook_id=self.state.application_id if webhook else None,
            interaction_metadata=interaction_metadata,
        )
        apply_body(message, body, files, self.state.ids, self.attachment_url, creating=True)
        if flags is not None:
            message.flags = flags
        message.mentions = [
            self.state.users[int(uid)]
            for uid in _MENTION.findall(message.content)
            if int(uid) in self.state.users
        ]
        message.snapshot(source)
        self.state.messages[message.id] = message
        channel.last_message_id = message.id
        channel.message_count += 1
        self.state.notify()
        if not message.ephemeral:
            await self.gateway.dispatch(
                "MESSAGE_CREATE", message.payload(), channel.guild_id, GUILD_MESSAGES
            )
        return message

    async def edit(
        self,
        message: MessageRecord,
        body: dict[str, Any],
        files: list[UploadedFile],
        *,
        source: str,
    ) -> MessageRecord:
        """Apply an edit, record the new version, dispatch MESSAGE_UPDATE."""
        was_loading = message.loading
        apply_body(message, body, files, self.state.ids, self.attachment_url, creating=False)
        message.flags &= ~LOADING
        if not was_loading:  # a deferred response's first edit is its real content
            message.edited_at = iso_now()
        message.snapshot(source)
        self.state.notify()
        if not message.ephemeral:
            data = message.payload()
            await self.gateway.dispatch("MESSAGE_UPDATE", data, message.guild_id, GUILD_MESSAGES)
        return message

    async def delete(self, message: MessageRecord) -> None:
        """Mark deleted and dispatch MESSAGE_DELETE."""
        message.deleted = True
        self.state.notify()
        if not message.ephemeral:
            data = {"id": str(message.id), "channel_id": str(message.channel_id)}
            if message.guild_id is not None:
                data["guild_id"] = str(message.guild_id)
            await self.gateway.dispatch("MESSAGE_DELETE", data, message.guild_id, GUILD_MESSAGES)
