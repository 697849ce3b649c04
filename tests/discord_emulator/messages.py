"""Messages the emulator keeps: current state, every version, attachments."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .models import Snowflakes, User, iso_now

EPHEMERAL = 1 << 6
LOADING = 1 << 7
SUPPRESS_EMBEDS = 1 << 2
#: Flags a client may set or change on an existing message.
EDITABLE_FLAGS = SUPPRESS_EMBEDS


@dataclass
class Attachment:
    """A file attached to a message, with its bytes."""

    id: int
    filename: str
    data: bytes
    content_type: str | None = None
    description: str | None = None
    url: str = ""

    @property
    def size(self) -> int:
        """Size in bytes."""
        return len(self.data)

    def text(self, encoding: str = "utf-8") -> str:
        """The content decoded as text."""
        return self.data.decode(encoding)

    def payload(self) -> dict[str, Any]:
        """The attachment object as Discord sends it."""
        return {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
            "description": self.description,
        }


@dataclass(frozen=True)
class UploadedFile:
    """A ``files[n]`` part of a multipart request."""

    filename: str
    data: bytes
    content_type: str | None = None


@dataclass
class MessageVersion:
    """One state of a message: its creation or an edit."""

    at: float  # time.monotonic()
    at_utc: str
    source: str  # e.g. "POST /channels/1/messages", "PATCH @original"
    content: str
    embeds: list[dict[str, Any]]
    components: list[dict[str, Any]]
    attachments: list[str]  # filenames
    flags: int
    allowed_mentions: dict[str, Any] | None


@dataclass
class MessageRecord:
    """A message as the emulator holds it; ``history[0]`` is its creation."""

    id: int
    channel_id: int
    guild_id: int | None
    author: User
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    flags: int = 0
    allowed_mentions: dict[str, Any] | None = None
    kind: str = "channel"  # "channel", "original", "followup", "user"
    type: int = 0
    webhook_id: int | None = None
    interaction_id: int | None = None
    interaction_metadata: dict[str, Any] | None = None
    message_reference: dict[str, Any] | None = None
    thread_id: int | None = None
    mentions: list[User] = field(default_factory=list)
    created_at: str = field(default_factory=iso_now)
    edited_at: str | None = None
    deleted: bool = False
    history: list[MessageVersion] = field(default_factory=list)

    @property
    def edits(self) -> list[MessageVersion]:
        """Every version after the first."""
        return self.history[1:]

    @property
    def ephemeral(self) -> bool:
        """Whether only the invoking user sees the message."""
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        """Whether this is a deferred response still showing "thinking…"."""
        return bool(self.flags & LOADING)

    @property
    def pings_no_one(self) -> bool:
        """Whether the message's ``allowed_mentions`` stop every ping."""
        am = self.allowed_mentions
        return (
            am is not None
            and not am.get("parse")
            and not am.get("users")
            and not am.get("roles")
            and not am.get("replied_user")
        )

    def custom_ids(self) -> list[str]:
        """Every component custom id on the message, in order."""
        found: list[str] = []

        def walk(items: list[dict[str, Any]]) -> None:
            for item in items:
                if "custom_id" in item:
                    found.append(item["custom_id"])
                walk(item.get("components", []))
                if "accessory" in item:
                    walk([item["accessory"]])

        walk(self.components)
        return found

    def buttons(self) -> list[dict[str, Any]]:
        """Every button (type 2) component on the message."""
        out: list[dict[str, Any]] = []

        def walk(items: list[dict[str, Any]]) -> None:
            for item in items:
                if item.get("type") == 2:
                    out.append(item)
                walk(item.get("components", []))

        walk(self.components)
        return out

    def snapshot(self, source: str) -> None:
        """Append the current state to the history."""
        self.history.append(
            MessageVersion(
                at=time.monotonic(),
                at_utc=iso_now(),
                source=source,
                content=self.content,
                embeds=[dict(e) for e in self.embeds],
                components=list(self.components),
                attachments=[a.filename for a in self.attachments],
                flags=self.flags,
                allowed_mentions=self.allowed_mentions,
            )
        )

    def payload(self) -> dict[str, Any]:
        """The message object as Discord returns it."""
        data: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author.payload(),
            "content": self.content,
            "timestamp": self.created_at,
            "edited_timestamp": self.edited_at,
            "tts": False,
            "mention_everyone": False,
            "mentions": [u.payload() for u in self.mentions],
            "mention_roles": [],
            "attachments": [a.payload() for a in self.attachments],
            "embeds": self.embeds,
            "components": self.components,
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
        }
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
            data["application_id"] = str(self.webhook_id)
        if self.interaction_metadata is not None:
            data["interaction_metadata"] = self.interaction_metadata
        if self.message_reference is not None:
            data["message_reference"] = self.message_reference
        return data


def apply_body(
    message: MessageRecord,
    body: dict[str, Any],
    files: list[UploadedFile],
    ids: Snowflakes,
    attachment_url: str,
    *,
    creating: bool,
) -> None:
    """Apply a create or edit body (``payload_json`` and files) to ``message``, Discord's way."""
    if "content" in body:
        message.content = body["content"] or ""
    if "embeds" in body:
        message.embeds = list(body["embeds"] or [])
    elif "embed" in body:
        message.embeds = [body["embed"]] if body["embed"] else []
    if "components" in body:
        message.components = list(body["components"] or [])
    if "allowed_mentions" in body:
        message.allowed_mentions = body["allowed_mentions"]
    if body.get("flags") is not None:
        if creating:
            message.flags = int(body["flags"])
        else:
            keep = message.flags & ~EDITABLE_FLAGS
            message.flags = keep | (int(body["flags"]) & EDITABLE_FLAGS)
    if "message_reference" in body and creating:
        message.message_reference = body["message_reference"]
    message.attachments = _attachments(message, body, files, ids, attachment_url, creating)


def _attachments(
    message: MessageRecord,
    body: dict[str, Any],
    files: list[UploadedFile],
    ids: Snowflakes,
    attachment_url: str,
    creating: bool,
) -> list[Attachment]:
    """Attachments after the request: kept ones listed in ``attachments``, plus uploads."""
    described = {str(a.get("id")): a for a in body.get("attachments") or [] if isinstance(a, dict)}
    if "attachments" in body:
        kept = [a for a in message.attachments if str(a.id) in described]
    else:
        kept = [] if creating else list(message.attachments)
    for index, upload in enumerate(files):
        meta = described.get(str(index), {})
        attachment = Attachment(
            id=ids.next(),
            filename=meta.get("filename") or upload.filename,
            data=upload.data,
            content_type=upload.content_type,
            description=meta.get("description"),
        )
        where = f"{message.channel_id}/{attachment.id}/{attachment.filename}"
        attachment.url = f"{attachment_url}/{where}"
        kept.append(attachment)
    return kept
