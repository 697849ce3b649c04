"""``DiscordEmulator``: the aiohttp app, its set-up, and the helpers tests drive it with."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from aiohttp import web

from .actions import UserActions
from .common import Messaging, discord_error, json_response
from .faults import Faults, fault_response
from .gateway import Gateway
from .messages import MessageRecord
from .models import (
    EVERYONE_PERMISSIONS,
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    Channel,
    Guild,
    Member,
    Role,
    Snowflakes,
    User,
)
from .rest import BotRoutes
from .state import EmulatorState, RequestLog
from .webhooks import WebhookRoutes

T = TypeVar("T")
API_PREFIX = "/api/v10"
#: Default people in every guild: name -> guild permissions granted by a role.
DEFAULT_USERS: dict[str, int] = {
    "alice": 0,
    "bob": 0,
    "manager": MANAGE_GUILD,
    "moderator": MANAGE_MESSAGES,
}
DEFAULT_BOT_PERMISSIONS = EVERYONE_PERMISSIONS | MANAGE_MESSAGES


class DiscordEmulator(UserActions):
    """A small Discord (REST + gateway on 127.0.0.1) that the real discord.py talks to.

    ``async with DiscordEmulator() as emu:`` starts it on a free port with one guild
    (``#general``), its owner, and the users of ``users`` (name -> guild permissions).
    """

    def __init__(
        self,
        guilds: int | Sequence[str] = 1,
        users: Mapping[str, int] | None = None,
        *,
        channels: Sequence[str] = ("general",),
        shards: int = 1,
        token: str | None = None,
        bot_name: str = "Muse",
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
        token_ttl_s: float = 15 * 60,
        callback_deadline_s: float | None = 3.0,
        heartbeat_interval_ms: int = 41_250,
        faults: Faults | None = None,
    ) -> None:
        ids = Snowflakes()
        app_id = ids.next()
        bot = User(app_id, bot_name, bot=True)
        self.state = EmulatorState(
            token=token or f"{secrets.token_urlsafe(18)}.emulator.{secrets.token_urlsafe(27)}",
            application_id=app_id,
            bot_user=bot,
            ids=ids,
            token_ttl_s=token_ttl_s,
            callback_deadline_s=callback_deadline_s,
        )
        self.state.users[bot.id] = bot
        self.faults = faults or Faults()
        self.gateway = Gateway(self.state, heartbeat_interval_ms)
        self.messaging = Messaging(self.state, self.gateway)
        self._bot_routes = BotRoutes(self.messaging, shards)
        self._webhook_routes = WebhookRoutes(self.messaging)
        self._bot_permissions = bot_permissions
        self._runner: web.AppRunner | None = None
        self._saved: tuple[str, Any] | None = None
        self.port = 0
        self.owner = self.add_user("owner")
        names = [f"Guild {i + 1}" for i in range(guilds)] if isinstance(guilds, int) else guilds
        for name in names:
            self.create_guild(name, channels)
        for name, permissions in (DEFAULT_USERS if users is None else users).items():
            self.add_user(name, permissions)

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> DiscordEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1 (a free port unless ``port``)."""
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024**2)
        for route in self._bot_routes.routes() + self._webhook_routes.routes():
            app.router.add_route(route.method, API_PREFIX + route.path, route.handler)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/", self.gateway.handle)
        app.router.add_get("/attachments/{channel}/{id}/{filename}", self._attachment)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = self._runner.addresses[0][1]
        self.state.base_url = f"http://127.0.0.1:{self.port}"
        self.gateway.url = f"ws://127.0.0.1:{self.port}/gateway"
        self.state.notify()

    async def close(self) -> None:
        """Close every websocket, stop listening, undo ``configure_discord_py``."""
        self.restore_discord_py()
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def api_base(self) -> str:
        """The REST base for ``discord.http.Route.BASE``."""
        return f"{self.state.base_url}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        """The gateway URL for ``DiscordWebSocket.DEFAULT_GATEWAY``."""
        return self.gateway.url

    @property
    def token(self) -> str:
        """The bot token the emulator accepts."""
        return self.state.token

    @property
    def application_id(self) -> int:
        """The application (and bot user) id."""
        return self.state.application_id

    @property
    def bot_user(self) -> User:
        """The bot's user."""
        return self.state.bot_user

    def env(self) -> dict[str, str]:
        """Muse's settings that point it at this emulator."""
        return {
            "DISCORD_TOKEN": self.token,
            "DISCORD_API_BASE": self.api_base,
            "DISCORD_GATEWAY_URL": self.gateway_url,
            "MUSE_GUILD_IDS": ",".join(str(g) for g in self.state.guilds),
        }

    def configure_discord_py(self) -> None:
        """Point discord.py's ``Route.BASE`` and ``DEFAULT_GATEWAY`` here (undone on close)."""
        import discord.gateway
        import discord.http
        import yarl

        if self._saved is None:
            ws = discord.gateway.DiscordWebSocket
            self._saved = (discord.http.Route.BASE, ws.DEFAULT_GATEWAY)
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)

    def restore_discord_py(self) -> None:
        """Undo ``configure_discord_py``."""
        if self._saved is not None:
            import discord.gateway
            import discord.http

            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = self._saved
            self._saved = None

    @contextlib.contextmanager
    def discord_py_patched(self) -> Iterator[DiscordEmulator]:
        """``with emu.discord_py_patched():`` — ``configure_discord_py`` for a block."""
        self.configure_discord_py()
        try:
            yield self
        finally:
            self.restore_discord_py()

    # --- people and places --------------------------------------------------------------

    @property
    def guilds(self) -> list[Guild]:
        """Every guild."""
        return list(self.state.guilds.values())

    @property
    def channel(self) -> Channel:
        """The first guild's first text channel."""
        return self.guild.text_channels[0]

    def user(self, name: str | int) -> User:
        """A user by name or id."""
        return self.state.user(name)

    def create_guild(self, name: str, channels: Sequence[str] = ("general",)) -> Guild:
        """A guild owned by ``owner`` with the bot (and existing users) as members."""
        ids = self.state.ids
        guild = Guild(ids.next(), name, self.owner.id)
        guild.roles[guild.id] = Role(guild.id, "@everyone", EVERYONE_PERMISSIONS)
        for position, channel_name in enumerate(channels):
            channel = Channel(ids.next(), guild.id, channel_name, position=position)
            guild.channels[channel.id] = channel
            self.state.channels[channel.id] = channel
        bot_role = Role(ids.next(), self.bot_user.name, self._bot_permissions, 1, managed=True)
        guild.roles[bot_role.id] = bot_role
        guild.members[self.bot_user.id] = Member(self.bot_user, [bot_role.id])
        for user in self.state.users.values():
            guild.members.setdefault(user.id, Member(user))
        self.state.guilds[guild.id] = guild
        return guild

    def add_user(
        self, name: str, permissions: int = 0, guilds: Sequence[Guild] | None = None
    ) -> User:
        """A user, member of ``guilds`` (all by default) with a role granting ``permissions``."""
        user = User(self.state.ids.next(), name)
        self.state.users[user.id] = user
        for guild in self.guilds if guilds is None else guilds:
            roles = [guild.role_for(permissions, self.state.ids).id] if permissions else []
            guild.members[user.id] = Member(user, roles)
        return user

    # --- what the bot did ---------------------------------------------------------------

    @property
    def messages(self) -> list[MessageRecord]:
        """Every message, oldest first."""
        return list(self.state.messages.values())

    def bot_messages(self, channel: Channel | None = None) -> list[MessageRecord]:
        """Messages the bot created (optionally in one channel), oldest first."""
        return [
            m for m in self.state.bot_messages() if channel is None or m.channel_id == channel.id
        ]

    def commands(self, guild: Guild | None = None, *, global_: bool = False) -> list[dict]:
        """Synced commands of a guild (the first by default) or the global ones."""
        scope = None if global_ else (guild or self.guild).id
        return self.state.commands.get(scope, [])

    def threads(self, guild: Guild | None = None) -> list[Channel]:
        """Threads of a guild (the first by default), oldest first."""
        return [c for c in (guild or self.guild).channels.values() if c.is_thread]

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:  # noqa: ASYNC109
        """Return the first truthy ``predicate()``, re-checked on every emulator change."""
        return await self.state.wait_for(predicate, timeout)

    async def wait_connected(self, sessions: int = 1, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until ``sessions`` gateway sessions are identified and connected."""
        await self.wait_for(lambda: len(self.gateway.live_sessions()) >= sessions, timeout)

    # --- internals ----------------------------------------------------------------------

    async def _attachment(self, request: web.Request) -> web.Response:
        for message in self.state.messages.values():
            for attachment in message.attachments:
                if str(attachment.id) == request.match_info["id"]:
                    return web.Response(body=attachment.data, content_type=attachment.content_type)
        return web.Response(status=404)

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path, method = request.path, request.method
        if not path.startswith(API_PREFIX):
            return await handler(request)
        rel = path[len(API_PREFIX) :]
        delay = self.faults.delay_for(method, rel)
        if delay:
            await asyncio.sleep(delay)
        response: web.StreamResponse
        needs_auth = not rel.startswith(("/webhooks/", "/interactions/"))
        if needs_auth and request.headers.get("Authorization") != f"Bot {self.token}":
            response = discord_error(401, "401: Unauthorized", 0)
        elif rule := self.faults.decide(method, rel):
            status, body, headers = fault_response(rule)
            response = json_response(body, status, headers)
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                self.state.unhandled.append(f"{method} {rel}")
                response = discord_error(exc.status, f"{exc.status}: {exc.reason}", 0)
        self.state.requests.append(RequestLog(method, rel, response.status, time.monotonic()))
        self.state.notify()
        return response
