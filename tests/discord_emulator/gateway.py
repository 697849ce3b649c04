"""The websocket gateway: HELLO, IDENTIFY/READY, RESUME with replay, heartbeats, sharding."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .state import EmulatorState

_log = logging.getLogger("muse.tests.discord_emulator.gateway")

# Opcodes.
DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE, VOICE_STATE = 0, 1, 2, 3, 4
RESUME, RECONNECT, REQUEST_MEMBERS, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 6, 7, 8, 9, 10, 11

# Intents that gate events the emulator sends.
GUILDS = 1 << 0
GUILD_MESSAGES = 1 << 9
MESSAGE_CONTENT = 1 << 15


@dataclass(frozen=True)
class GatewayEvent:
    """Something that happened on the gateway (for assertions)."""

    kind: str  # connect, identify, resume, resumed, invalid_session, drop, close
    shard: tuple[int, int] | None
    session_id: str | None
    at: float


class Connection:
    """One websocket, with its zlib-stream compressor and a send lock."""

    def __init__(self, ws: web.WebSocketResponse, compress: bool) -> None:
        self.ws = ws
        self._compressor = zlib.compressobj() if compress else None
        self._lock = asyncio.Lock()

    async def send(self, payload: dict[str, Any]) -> bool:
        """Send one gateway message; ``False`` when the socket is gone."""
        text = json.dumps(payload, separators=(",", ":"))
        async with self._lock:
            if self.ws.closed:
                return False
            try:
                if self._compressor is None:
                    await self.ws.send_str(text)
                else:
                    data = self._compressor.compress(text.encode())
                    await self.ws.send_bytes(data + self._compressor.flush(zlib.Z_SYNC_FLUSH))
            except (ConnectionError, RuntimeError):
                return False
        return True


@dataclass
class Session:
    """A gateway session; it outlives its connection so it can be resumed."""

    id: str
    shard: tuple[int, int] | None
    intents: int
    seq: int = 0
    conn: Connection | None = None
    buffer: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=5000))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def owns(self, guild_id: int) -> bool:
        """Whether the guild's events go to this session's shard."""
        if self.shard is None:
            return True
        shard_id, count = self.shard
        return (guild_id >> 22) % count == shard_id

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Number, buffer (for RESUME) and send one DISPATCH."""
        async with self.lock:
            self.seq += 1
            payload = {"op": DISPATCH, "t": event, "s": self.seq, "d": data}
            self.buffer.append(payload)
            if self.conn is not None and not await self.conn.send(payload):
                self.conn = None


class Gateway:
    """Serves ``GET /gateway`` websockets and routes dispatches to sessions."""

    def __init__(self, state: EmulatorState, heartbeat_interval_ms: int = 41_250) -> None:
        self.state = state
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.sessions: dict[str, Session] = {}
        self.events: list[GatewayEvent] = []
        self.url = ""  # set by the server once it has a port
        self._connections: set[web.WebSocketResponse] = set()

    # --- for tests ----------------------------------------------------------------------

    def count(self, kind: str) -> int:
        """How many gateway events of ``kind`` happened."""
        return sum(1 for e in self.events if e.kind == kind)

    def live_sessions(self) -> list[Session]:
        """Sessions with an open connection."""
        return [s for s in self.sessions.values() if s.conn is not None and not s.conn.ws.closed]

    async def drop(self, code: int = 4000, shard_id: int | None = None) -> int:
        """Close live connections with a resumable close code; returns how many."""
        dropped = 0
        for session in self.live_sessions():
            if shard_id is not None and (session.shard or (0, 1))[0] != shard_id:
                continue
            conn, session.conn = session.conn, None
            assert conn is not None
            self._note("drop", session)
            await conn.ws.close(code=code, message=b"emulator dropped the connection")
            dropped += 1
        return dropped

    async def send_op(
        self, op: int, data: Any = None, shard_id: int | None = None, end_sessions: bool = False
    ) -> None:
        """Send a raw opcode (RECONNECT 7, INVALID_SESSION 9, …) to live sessions."""
        for session in self.live_sessions():
            if shard_id is None or (session.shard or (0, 1))[0] == shard_id:
                assert session.conn is not None
                await session.conn.send({"op": op, "d": data})
                if end_sessions:
                    self.sessions.pop(session.id, None)
                    self._note("invalid_session", session)

    async def dispatch(
        self, event: str, data: dict[str, Any], guild_id: int | None = None, intent: int = 0
    ) -> int:
        """Send a DISPATCH to every session that should get it; returns how many."""
        sent = 0
        for session in list(self.sessions.values()):
            if guild_id is not None and not session.owns(guild_id):
                continue
            if intent and not session.intents & intent:
                continue
            body = data
            if event == "MESSAGE_CREATE" and not session.intents & MESSAGE_CONTENT:
                body = _without_content(data, self.state.bot_user.id)
            await session.dispatch(event, body)
            sent += 1
        return sent

    async def close_all(self) -> None:
        """Close every websocket (server shutdown)."""
        for ws in list(self._connections):
            await ws.close(code=1001, message=b"emulator shutting down")

    # --- websocket handler --------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """One gateway websocket from HELLO until close."""
        if request.query.get("encoding", "json") != "json":
            raise web.HTTPBadRequest(text="the emulator speaks encoding=json only")
        ws = web.WebSocketResponse(max_msg_size=0, autoclose=True)
        await ws.prepare(request)
        conn = Connection(ws, request.query.get("compress") == "zlib-stream")
        self._connections.add(ws)
        session: Session | None = None
        self.events.append(GatewayEvent("connect", None, None, time.monotonic()))
        try:
            await conn.send({"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                session = await self._on_message(conn, session, payload) or session
        finally:
            self._connections.discard(ws)
            if session is not None and session.conn is conn:
                session.conn = None
                if ws.close_code in (1000, 1001):
                    # A clean close by the client ends the session, as on Discord.
                    self.sessions.pop(session.id, None)
                    self._note("close", session)
            self.state.notify()
        return ws

    async def _on_message(
        self, conn: Connection, session: Session | None, payload: dict[str, Any]
    ) -> Session | None:
        op, data = payload.get("op"), payload.get("d")
        if op == HEARTBEAT:
            await conn.send({"op": HEARTBEAT_ACK})
        elif op in (IDENTIFY, RESUME) and session is not None:
            await conn.ws.close(code=4005, message=b"Already authenticated.")
        elif op not in (IDENTIFY, RESUME) and session is None:
            await conn.ws.close(code=4003, message=b"Not authenticated.")
        elif op == IDENTIFY:
            return await self._identify(conn, data)
        elif op == RESUME:
            return await self._resume(conn, data)
        elif op == REQUEST_MEMBERS and session is not None:
            await self._members_chunk(session, data)
        elif op in (PRESENCE, VOICE_STATE):
            pass
        else:
            _log.debug("ignoring gateway op %s", op)
        return None

    async def _identify(self, conn: Connection, data: dict[str, Any]) -> Session | None:
        if data.get("token") != self.state.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return None
        if "intents" not in data:
            await conn.ws.close(code=4013, message=b"Invalid intent(s).")
            return None
        shard = tuple(data["shard"]) if data.get("shard") else None
        if shard is not None and not 0 <= shard[0] < shard[1]:
            await conn.ws.close(code=4010, message=b"Invalid shard.")
            return None
        session = Session(secrets.token_hex(16), shard, int(data["intents"]), conn=conn)  # type: ignore[arg-type]
        self.sessions[session.id] = session
        self._note("identify", session)
        guilds = [g for g in self.state.guilds.values() if session.owns(g.id)]
        ready: dict[str, Any] = {
            "v": 10,
            "user": self.state.bot_user.payload() | {"verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.url,
            "application": {"id": str(self.state.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "auth_session_id_hash": "",
        }
        if shard is not None:
            ready["shard"] = list(shard)
        await session.dispatch("READY", ready)
        for guild in guilds:
            await session.dispatch("GUILD_CREATE", guild.payload())
        self.state.notify()
        return session

    async def _resume(self, conn: Connection, data: dict[str, Any]) -> Session | None:
        session = self.sessions.get(data.get("session_id", ""))
        seq = data.get("seq") or 0
        oldest = session.buffer[0]["s"] if session and session.buffer else 1
        if (
            session is None
            or data.get("token") != self.state.token
            or seq < oldest - 1
            or seq > session.seq
        ):
            self.events.append(GatewayEvent("invalid_session", None, None, time.monotonic()))
            await conn.send({"op": INVALID_SESSION, "d": False})
            self.state.notify()
            return None
        async with session.lock:
            old, session.conn = session.conn, conn
            self._note("resume", session)
            for payload in list(session.buffer):
                if payload["s"] > seq:
                    await conn.send(payload)
        if old is not None and old is not conn:
            await old.ws.close(code=4000)
        await session.dispatch("RESUMED", {})
        self._note("resumed", session)
        self.state.notify()
        return session

    async def _members_chunk(self, session: Session, data: dict[str, Any]) -> None:
        guild = self.state.guilds.get(int(data["guild_id"]))
        if guild is None:
            return
        wanted = {int(u) for u in data.get("user_ids") or []}
        members = [m.payload() for uid, m in guild.members.items() if not wanted or uid in wanted]
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [str(u) for u in wanted - guild.members.keys()],
        }
        if data.get("nonce"):
            chunk["nonce"] = data["nonce"]
        await session.dispatch("GUILD_MEMBERS_CHUNK", chunk)

    def _note(self, kind: str, session: Session) -> None:
        self.events.append(GatewayEvent(kind, session.shard, session.id, time.monotonic()))
        self.state.notify()


def _without_content(data: dict[str, Any], bot_id: int) -> dict[str, Any]:
    """A MESSAGE_CREATE as a bot without the Message Content intent sees it."""
    author = int(data["author"]["id"])
    mentioned = any(int(u["id"]) == bot_id for u in data.get("mentions", []))
    if author == bot_id or mentioned:
        return data
    return data | {"content": "", "embeds": [], "attachments": [], "components": []}
