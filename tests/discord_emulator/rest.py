"""Bot REST routes: identity, gateway info, application commands, channels, messages, threads."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from .common import Messaging, discord_error, invalid_form, json_response, no_content, read_body
from .gateway import GUILDS
from .messages import MessageRecord
from .models import PUBLIC_THREAD, Channel

_NAME = re.compile(r"^[-_\w]{1,32}$")


class BotRoutes:
    """Routes a bot token may call (``Authorization: Bot <token>``)."""

    def __init__(self, messaging: Messaging, shards: int = 1) -> None:
        self.messaging = messaging
        self.state = messaging.state
        self.gateway = messaging.gateway
        self.shards = shards

    def routes(self) -> list[web.RouteDef]:
        """The route table, relative to the API base."""
        app = "/applications/{app}"
        msg = "/channels/{channel}/messages/{message}"
        return [
            web.get("/users/@me", self.me),
            web.get("/users/{user}", self.get_user),
            web.get("/gateway", self.get_gateway),
            web.get("/gateway/bot", self.get_gateway_bot),
            web.get("/oauth2/applications/@me", self.application),
            web.get("/applications/@me", self.application),
            web.get(app + "/commands", self.get_commands),
            web.put(app + "/commands", self.put_commands),
            web.post(app + "/commands", self.post_command),
            web.get(app + "/guilds/{guild}/commands", self.get_commands),
            web.put(app + "/guilds/{guild}/commands", self.put_commands),
            web.post(app + "/guilds/{guild}/commands", self.post_command),
            web.delete(app + "/commands/{command}", self.delete_command),
            web.delete(app + "/guilds/{guild}/commands/{command}", self.delete_command),
            web.get("/guilds/{guild}", self.get_guild),
            web.get("/guilds/{guild}/channels", self.get_guild_channels),
            web.get("/guilds/{guild}/members/{user}", self.get_member),
            web.get("/channels/{channel}", self.get_channel),
            web.get("/channels/{channel}/messages", self.list_messages),
            web.post("/channels/{channel}/messages", self.post_message),
            web.post("/channels/{channel}/typing", self.typing),
            web.post("/channels/{channel}/threads", self.create_thread),
            web.put("/channels/{channel}/thread-members/@me", self.typing),
            web.get(msg, self.get_message),
            web.patch(msg, self.patch_message),
            web.delete(msg, self.delete_message),
            web.post(msg + "/threads", self.create_thread),
            web.put(msg + "/reactions/{emoji}/@me", self.typing),
        ]

    # --- identity and application -------------------------------------------------------

    async def me(self, request: web.Request) -> web.Response:
        """GET /users/@me."""
        return json_response(self.state.bot_user.payload() | {"verified": True, "flags": 0})

    async def get_user(self, request: web.Request) -> web.Response:
        """GET /users/{id}."""
        user = self.state.users.get(int(request.match_info["user"]))
        if user is None:
            return discord_error(404, "Unknown User", 10013)
        return json_response(user.payload())

    async def get_gateway(self, request: web.Request) -> web.Response:
        """GET /gateway."""
        return json_response({"url": self.gateway.url})

    async def get_gateway_bot(self, request: web.Request) -> web.Response:
        """GET /gateway/bot: the emulator's gateway, recommended shards, start limits."""
        limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        body = {"url": self.gateway.url, "shards": self.shards, "session_start_limit": limit}
        return json_response(body)

    async def application(self, request: web.Request) -> web.Response:
        """GET /oauth2/applications/@me."""
        owner = next(u for u in self.state.users.values() if not u.bot)
        return json_response(
            {
                "id": str(self.state.application_id),
                "name": self.state.bot_user.name,
                "icon": None,
                "description": "Muse test application",
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "owner": owner.payload(),
                "team": None,
                "flags": 0,
                "bot": self.state.bot_user.payload(),
                "interactions_endpoint_url": None,
            }
        )

    # --- application commands -----------------------------------------------------------

    def _scope(self, request: web.Request) -> int | None | web.Response:
        if request.match_info["app"] != str(self.state.application_id):
            return discord_error(403, "Missing Access", 50001)
        guild = request.match_info.get("guild")
        if guild is None:
            return None
        if int(guild) not in self.state.guilds:
            return discord_error(403, "Missing Access", 50001)
        return int(guild)

    async def get_commands(self, request: web.Request) -> web.Response:
        """GET application commands (global or guild)."""
        scope = self._scope(request)
        if isinstance(scope, web.Response):
            return scope
        return json_response(self.state.commands.get(scope, []))

    async def put_commands(self, request: web.Request) -> web.Response:
        """PUT (bulk overwrite) application commands; ids survive for unchanged names."""
        scope = self._scope(request)
        if isinstance(scope, web.Response):
            return scope
        body = await request.json()
        for index, command in enumerate(body):
            problem = _command_problem(command)
            if problem:
                return invalid_form(f"{index}.{problem[0]}", problem[1])
        old = {(c["name"], c.get("type", 1)): c["id"] for c in self.state.commands.get(scope, [])}
        stored = [self._stored(c, scope, old.get((c["name"], c.get("type", 1)))) for c in body]
        self.state.commands[scope] = stored
        self.state.notify()
        return json_response(stored)

    async def post_command(self, request: web.Request) -> web.Response:
        """POST (upsert) one application command."""
        scope = self._scope(request)
        if isinstance(scope, web.Response):
            return scope
        command = await request.json()
        problem = _command_problem(command)
        if problem:
            return invalid_form(problem[0], problem[1])
        current = self.state.commands.setdefault(scope, [])
        key = (command["name"], command.get("type", 1))
        same = [c for c in current if (c["name"], c.get("type", 1)) == key]
        stored = self._stored(command, scope, same[0]["id"] if same else None)
        current[:] = [c for c in current if c not in same] + [stored]
        self.state.notify()
        return json_response(stored, 200 if same else 201)

    async def delete_command(self, request: web.Request) -> web.Response:
        """DELETE one application command."""
        scope = self._scope(request)
        if isinstance(scope, web.Response):
            return scope
        current = self.state.commands.get(scope, [])
        remaining = [c for c in current if c["id"] != request.match_info["command"]]
        if len(remaining) == len(current):
            return discord_error(404, "Unknown application command", 10063)
        self.state.commands[scope] = remaining
        self.state.notify()
        return no_content()

    def _stored(self, command: dict[str, Any], scope: int | None, old_id: str | None) -> dict:
        stored = {
            "type": 1,
            "description": "",
            "options": [],
            "default_member_permissions": None,
            "nsfw": False,
            "contexts": None,
            "integration_types": [0],
        } | command
        stored |= {
            "id": old_id or str(self.state.ids.next()),
            "application_id": str(self.state.application_id),
            "version": str(self.state.ids.next()),
        }
        if scope is not None:
            stored["guild_id"] = str(scope)
        return stored

    # --- guilds and channels ------------------------------------------------------------

    async def get_guild(self, request: web.Request) -> web.Response:
        """GET /guilds/{id}."""
        guild = self.state.guilds.get(int(request.match_info["guild"]))
        if guild is None:
            return discord_error(404, "Unknown Guild", 10004)
        data = guild.payload()
        for key in ("channels", "members", "threads", "voice_states", "presences"):
            data.pop(key)
        return json_response(data)

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        """GET /guilds/{id}/channels."""
        guild = self.state.guilds.get(int(request.match_info["guild"]))
        if guild is None:
            return discord_error(404, "Unknown Guild", 10004)
        return json_response([c.payload() for c in guild.text_channels])

    async def get_member(self, request: web.Request) -> web.Response:
        """GET /guilds/{id}/members/{user}."""
        guild = self.state.guilds.get(int(request.match_info["guild"]))
        member = guild and guild.members.get(int(request.match_info["user"]))
        if member is None:
            return discord_error(404, "Unknown Member", 10007)
        return json_response(member.payload())

    def _channel(self, request: web.Request) -> Channel | None:
        return self.state.channels.get(int(request.match_info["channel"]))

    async def get_channel(self, request: web.Request) -> web.Response:
        """GET /channels/{id}."""
        channel = self._channel(request)
        if channel is None:
            return discord_error(404, "Unknown Channel", 10003)
        return json_response(channel.payload())

    async def typing(self, request: web.Request) -> web.Response:
        """Typing, joining a thread, reacting: accepted, nothing to record."""
        if self._channel(request) is None:
            return discord_error(404, "Unknown Channel", 10003)
        return no_content()

    # --- messages -----------------------------------------------------------------------

    def _message(self, request: web.Request) -> MessageRecord | None:
        message = self.state.messages.get(int(request.match_info["message"]))
        if message is None or message.deleted or message.ephemeral:
            return None
        if message.channel_id != int(request.match_info["channel"]):
            return None
        return message

    async def list_messages(self, request: web.Request) -> web.Response:
        """GET /channels/{id}/messages with limit/before/after, newest first."""
        channel = self._channel(request)
        if channel is None:
            return discord_error(404, "Unknown Channel", 10003)
        limit = min(int(request.query.get("limit", 50)), 100)
        before = int(request.query.get("before", 1 << 63))
        after = int(request.query.get("after", 0))
        found = [
            m
            for m in self.state.messages.values()
            if m.channel_id == channel.id
            and not m.deleted
            and not m.ephemeral
            and after < m.id < before
        ]
        found.sort(key=lambda m: m.id, reverse=True)
        if "after" in request.query and "before" not in request.query:
            found = found[-limit:]
        return json_response([m.payload() for m in found[:limit]])

    async def get_message(self, request: web.Request) -> web.Response:
        """GET one channel message."""
        message = self._message(request)
        if message is None:
            return discord_error(404, "Unknown Message", 10008)
        return json_response(message.payload())

    async def post_message(self, request: web.Request) -> web.Response:
        """POST /channels/{id}/messages (JSON or multipart)."""
        channel = self._channel(request)
        if channel is None:
            return discord_error(404, "Unknown Channel", 10003)
        body, files = await read_body(request)
        if not (body.get("content") or body.get("embeds") or files or body.get("components")):
            return discord_error(400, "Cannot send an empty message", 50006)
        if len(body.get("content") or "") > 2000:
            return invalid_form("content", "Must be 2000 or fewer in length.")
        reply = body.get("message_reference") is not None
        message = await self.messaging.create(
            channel,
            self.state.bot_user,
            body,
            files,
            source=f"POST /channels/{channel.id}/messages",
            type=19 if reply else 0,
        )
        return json_response(message.payload())

    async def patch_message(self, request: web.Request) -> web.Response:
        """PATCH a channel message the bot wrote."""
        message = self._message(request)
        if message is None:
            return discord_error(404, "Unknown Message", 10008)
        if message.author.id != self.state.bot_user.id:
            return discord_error(403, "Cannot edit a message authored by another user", 50005)
        body, files = await read_body(request)
        if len(body.get("content") or "") > 2000:
            return invalid_form("content", "Must be 2000 or fewer in length.")
        await self.messaging.edit(message, body, files, source=f"PATCH {request.path}")
        return json_response(message.payload())

    async def delete_message(self, request: web.Request) -> web.Response:
        """DELETE a channel message."""
        message = self._message(request)
        if message is None:
            return discord_error(404, "Unknown Message", 10008)
        await self.messaging.delete(message)
        return no_content()

    async def create_thread(self, request: web.Request) -> web.Response:
        """Start a thread (from a message: the thread id is the message id) and THREAD_CREATE."""
        parent = self._channel(request)
        if parent is None or parent.is_thread:
            return discord_error(404, "Unknown Channel", 10003)
        body = await request.json()
        name = str(body.get("name") or "")
        if not 1 <= len(name) <= 100:
            return invalid_form("name", "Must be between 1 and 100 in length.")
        thread_id = self.state.ids.next()
        if "message" in request.match_info:
            message = self._message(request)
            if message is None:
                return discord_error(404, "Unknown Message", 10008)
            if message.thread_id is not None:
                text = "A thread has already been created for this message"
                return discord_error(400, text, 160004)
            thread_id = message.thread_id = message.id
        thread = Channel(
            id=thread_id,
            guild_id=parent.guild_id,
            name=name,
            type=int(body.get("type", PUBLIC_THREAD)),
            parent_id=parent.id,
            owner_id=self.state.bot_user.id,
        )
        self.state.channels[thread.id] = thread
        self.state.guilds[parent.guild_id].channels[thread.id] = thread
        self.state.notify()
        event = thread.payload() | {"newly_created": True}
        await self.gateway.dispatch("THREAD_CREATE", event, parent.guild_id, GUILDS)
        return json_response(thread.payload(), 201)


def _command_problem(command: dict[str, Any]) -> tuple[str, str] | None:
    """The first thing Discord would reject in a command definition, if any."""
    name = command.get("name", "")
    kind = command.get("type", 1)
    if kind == 1 and (not _NAME.match(name) or name != name.lower()):
        return "name", f"Invalid command name {name!r}"
    if kind == 1 and not 1 <= len(command.get("description") or "") <= 100:
        return "description", "Must be between 1 and 100 in length."
    return _options_problem(command.get("options") or [], "options")


def _options_problem(options: list[dict[str, Any]], where: str) -> tuple[str, str] | None:
    if len(options) > 25:
        return where, "Must be 25 or fewer in length."
    seen_optional = False
    for index, option in enumerate(options):
        at = f"{where}.{index}"
        if not _NAME.match(option.get("name", "")) or option["name"] != option["name"].lower():
            return f"{at}.name", f"Invalid option name {option.get('name')!r}"
        if not 1 <= len(option.get("description") or "") <= 100:
            return f"{at}.description", "Must be between 1 and 100 in length."
        if len(option.get("choices") or []) > 25:
            return f"{at}.choices", "Must be 25 or fewer in length."
        if option.get("type") in (1, 2):
            problem = _options_problem(option.get("options") or [], f"{at}.options")
            if problem:
                return problem
            continue
        if option.get("required"):
            if seen_optional:
                return f"{at}.required", "Required options must be placed before non-required"
        else:
            seen_optional = True
    return None
