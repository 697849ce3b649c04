"""Interaction callbacks and interaction webhooks (original response, followups)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .common import Messaging, discord_error, invalid_form, json_response, no_content, read_body
from .interactions import APPLICATION_COMMAND, MODAL_SUBMIT, InteractionRecord
from .messages import EPHEMERAL, LOADING, MessageRecord

MESSAGE, DEFERRED_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE, AUTOCOMPLETE, MODAL = 4, 5, 6, 7, 8, 9


def invalid_token() -> web.Response:
    """What Discord answers for an expired or unknown interaction token."""
    return discord_error(401, "Invalid Webhook Token", 50027)


class WebhookRoutes:
    """``/interactions/{id}/{token}/callback`` and ``/webhooks/{app}/{token}/…``."""

    def __init__(self, messaging: Messaging) -> None:
        self.messaging = messaging
        self.state = messaging.state

    def routes(self) -> list[web.RouteDef]:
        """The route table, relative to the API base."""
        hook = "/webhooks/{app}/{token}"
        return [
            web.post("/interactions/{interaction}/{token}/callback", self.callback),
            web.post(hook, self.post_followup),
            web.get(hook + "/messages/{message}", self.get_message),
            web.patch(hook + "/messages/{message}", self.patch_message),
            web.delete(hook + "/messages/{message}", self.delete_message),
        ]

    # --- the callback -------------------------------------------------------------------

    async def callback(self, request: web.Request) -> web.Response:
        """Answer an interaction: message, defer, update, modal or autocomplete."""
        record = self.state.interactions.get(int(request.match_info["interaction"]))
        if record is None or record.token != request.match_info["token"]:
            return discord_error(404, "Unknown interaction", 10062)
        deadline = self.state.callback_deadline_s
        if deadline is not None and time.monotonic() - record.dispatched_at > deadline:
            record.errors.append(("callback", 404, 10062))
            record.touch()
            return discord_error(404, "Unknown interaction", 10062)
        if record.acknowledged:
            record.errors.append(("callback", 400, 40060))
            record.touch()
            return discord_error(400, "Interaction has already been acknowledged.", 40060)
        body, files = await read_body(request)
        kind, data = int(body.get("type", 0)), body.get("data") or {}
        message = self.state.messages.get(record.message_id or 0)
        if kind in (DEFERRED_UPDATE, UPDATE_MESSAGE) and message is None:
            return invalid_form("type", "Interaction has no message to update")
        if kind not in (
            MESSAGE,
            DEFERRED_MESSAGE,
            DEFERRED_UPDATE,
            UPDATE_MESSAGE,
            AUTOCOMPLETE,
            MODAL,
        ):
            return invalid_form("type", f"Unsupported callback type {kind}")
        if kind == MODAL and record.type == MODAL_SUBMIT:
            return invalid_form("type", "A modal submission cannot be answered with a modal")
        if kind == MESSAGE and len(data.get("content") or "") > 2000:
            return invalid_form("data.content", "Must be 2000 or fewer in length.")
        record.callback_type, record.callback_data = kind, body
        record.callback_at = time.monotonic()
        resource: dict[str, Any] = {"type": kind}
        if kind in (MESSAGE, DEFERRED_MESSAGE):
            flags = int(data.get("flags") or 0)
            if kind == DEFERRED_MESSAGE:
                flags = LOADING | (flags & EPHEMERAL)
                data = {}
            record.original = await self._create(record, data, files, "callback", flags, "original")
            resource["message"] = record.original.payload()
        elif kind == UPDATE_MESSAGE:
            assert message is not None
            record.original = await self.messaging.edit(message, data, files, source="callback 7")
            resource["message"] = message.payload()
        elif kind == DEFERRED_UPDATE:
            record.original = message
        elif kind == MODAL:
            record.modal = data
        record.touch()
        if request.query.get("with_response") not in ("1", "true", "True"):
            return no_content()
        original = record.original
        interaction = {
            "id": str(record.id),
            "type": record.type,
            "response_message_id": None if original is None else str(original.id),
            "response_message_loading": bool(original and original.loading),
            "response_message_ephemeral": bool(original and original.ephemeral),
        }
        return json_response({"interaction": interaction, "resource": resource})

    # --- webhooks -----------------------------------------------------------------------

    def _record(self, request: web.Request) -> InteractionRecord | web.Response:
        record = self.state.tokens.get(request.match_info["token"])
        if record is None or record.expired:
            if record is not None:
                record.errors.append((_label(request), 401, 50027))
                record.touch()
            return invalid_token()
        if request.match_info["app"] != str(self.state.application_id):
            return discord_error(404, "Unknown Webhook", 10015)
        record.touch()
        return record

    def _target(
        self, request: web.Request
    ) -> tuple[InteractionRecord, MessageRecord] | web.Response:
        record = self._record(request)
        if isinstance(record, web.Response):
            return record
        ref = request.match_info["message"]
        message = record.original if ref == "@original" else None
        if ref != "@original":
            message = next((m for m in record.messages if str(m.id) == ref), None)
        if message is None or message.deleted:
            record.errors.append((_label(request), 404, 10008))
            return discord_error(404, "Unknown Message", 10008)
        return record, message

    async def get_message(self, request: web.Request) -> web.Response:
        """GET the original response or a followup."""
        found = self._target(request)
        if isinstance(found, web.Response):
            return found
        return json_response(found[1].payload())

    async def patch_message(self, request: web.Request) -> web.Response:
        """PATCH the original response or a followup."""
        found = self._target(request)
        if isinstance(found, web.Response):
            return found
        record, message = found
        body, files = await read_body(request)
        if len(body.get("content") or "") > 2000:
            return invalid_form("content", "Must be 2000 or fewer in length.")
        label = "@original" if request.match_info["message"] == "@original" else "followup"
        await self.messaging.edit(message, body, files, source=f"PATCH {label}")
        record.touch()
        return json_response(message.payload())

    async def delete_message(self, request: web.Request) -> web.Response:
        """DELETE the original response or a followup."""
        found = self._target(request)
        if isinstance(found, web.Response):
            return found
        await self.messaging.delete(found[1])
        found[0].touch()
        return no_content()

    async def post_followup(self, request: web.Request) -> web.Response:
        """POST a followup; after a "thinking…" defer the first one replaces that message."""
        record = self._record(request)
        if isinstance(record, web.Response):
            return record
        if not record.acknowledged:
            record.errors.append((_label(request), 404, 10015))
            return discord_error(404, "Unknown Webhook", 10015)
        body, files = await read_body(request)
        if not (body.get("content") or body.get("embeds") or files or body.get("components")):
            return discord_error(400, "Cannot send an empty message", 50006)
        if len(body.get("content") or "") > 2000:
            return invalid_form("content", "Must be 2000 or fewer in length.")
        original = record.original
        if original is not None and original.loading and record.callback_type == DEFERRED_MESSAGE:
            message = await self.messaging.edit(
                original, body, files, source="POST followup (replaces thinking)"
            )
        else:
            flags = int(body.get("flags") or 0)
            message = await self._create(record, body, files, "POST followup", flags, "followup")
            record.followups.append(message)
        record.touch()
        if request.query.get("wait") in ("1", "true", "True"):
            return json_response(message.payload())
        return no_content()

    async def _create(
        self,
        record: InteractionRecord,
        body: dict[str, Any],
        files: list[Any],
        source: str,
        flags: int,
        kind: str,
    ) -> MessageRecord:
        metadata: dict[str, Any] = {
            "id": str(record.id),
            "type": record.type,
            "user": record.user.payload(),
            "authorizing_integration_owners": {"0": str(record.guild_id)},
        }
        if record.original is not None:
            metadata["original_response_message_id"] = str(record.original.id)
        if record.message_id is not None:
            metadata["interacted_message_id"] = str(record.message_id)
        return await self.messaging.create(
            self.state.channels[record.channel_id],
            self.state.bot_user,
            body,
            files,
            source=source,
            kind=kind,
            type=20 if record.type == APPLICATION_COMMAND else 0,
            webhook=True,
            interaction_metadata=metadata,
            flags=flags,
        )


def _label(request: web.Request) -> str:
    """A token-free name for a webhook request, e.g. ``PATCH @original``."""
    ref = request.match_info.get("message")
    if ref is None:
        return f"{request.method} followup"
    return f"{request.method} {'@original' if ref == '@original' else 'followup ' + ref}"
