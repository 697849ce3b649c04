"""The emulator's wire protocol, checked with a raw aiohttp client (no discord.py)."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.discord_emulator import DiscordEmulator, Faults
from tests.discord_emulator.gateway import GUILD_MESSAGES, GUILDS


class RawGateway:
    """A minimal gateway client speaking zlib-stream, as discord.py does."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._inflate = zlib.decompressobj()
        self._buffer = bytearray()

    async def recv(self) -> dict[str, Any]:
        while True:
            msg = await self.ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.BINARY, msg
            self._buffer.extend(msg.data)
            if self._buffer[-4:] == b"\x00\x00\xff\xff":
                text = self._inflate.decompress(bytes(self._buffer))
                self._buffer.clear()
                return json.loads(text)

    async def send(self, op: int, d: Any) -> None:
        await self.ws.send_str(json.dumps({"op": op, "d": d}))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def connect(http: aiohttp.ClientSession, emu: DiscordEmulator) -> RawGateway:
    ws = await http.ws_connect(f"{emu.gateway_url}?v=10&encoding=json&compress=zlib-stream")
    return RawGateway(ws)


async def identify(gw: RawGateway, emu: DiscordEmulator, intents: int) -> dict[str, Any]:
    hello = await gw.recv()
    assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] > 0
    await gw.send(2, {"token": emu.token, "intents": intents, "properties": {}})
    return await gw.recv()


async def test_identify_ready_guild_create_heartbeat(http: aiohttp.ClientSession):
    async with DiscordEmulator() as emu:
        gw = await connect(http, emu)
        ready = await identify(gw, emu, GUILDS)
        assert (ready["t"], ready["s"]) == ("READY", 1)
        assert ready["d"]["resume_gateway_url"] == emu.gateway_url
        assert ready["d"]["application"]["id"] == str(emu.application_id)
        assert ready["d"]["guilds"] == [{"id": str(emu.guild.id), "unavailable": True}]
        guild = await gw.recv()
        assert (guild["t"], guild["s"]) == ("GUILD_CREATE", 2)
        members = {m["user"]["username"] for m in guild["d"]["members"]}
        assert {"Muse", "owner", "alice", "manager", "moderator"} <= members
        assert guild["d"]["owner_id"] == str(emu.owner.id)
        await gw.send(1, 2)
        assert (await gw.recv())["op"] == 11


async def test_resume_replays_missed_dispatches(http: aiohttp.ClientSession):
    async with DiscordEmulator() as emu:
        gw = await connect(http, emu)
        ready = await identify(gw, emu, GUILDS | GUILD_MESSAGES)
        await gw.recv()  # GUILD_CREATE, s=2
        await emu.drop_gateway(code=4000)
        await emu.send_message(None, "while you were away", user="bob")  # s=3, buffered
        assert (await gw.ws.receive()).type is aiohttp.WSMsgType.CLOSE
        assert gw.ws.close_code == 4000

        gw = await connect(http, emu)
        await gw.recv()  # HELLO
        await gw.send(6, {"token": emu.token, "session_id": ready["d"]["session_id"], "seq": 2})
        missed, resumed = await gw.recv(), await gw.recv()
        assert (missed["t"], missed["s"]) == ("MESSAGE_CREATE", 3)
        assert missed["d"]["content"] == ""  # no MESSAGE_CONTENT intent, bot not mentioned
        assert (resumed["t"], resumed["s"]) == ("RESUMED", 4)

        await gw.send(6, {"token": emu.token, "session_id": ready["d"]["session_id"], "seq": 4})
        assert (await gw.ws.receive()).type is aiohttp.WSMsgType.CLOSE
        assert gw.ws.close_code == 4005  # already authenticated

        gw = await connect(http, emu)
        await gw.recv()  # HELLO
        await gw.send(6, {"token": emu.token, "session_id": "nope", "seq": 1})
        assert await gw.recv() == {"op": 9, "d": False}


async def test_rest_answers_like_discord(http: aiohttp.ClientSession):
    async with DiscordEmulator(callback_deadline_s=0.05) as emu:
        auth = {"Authorization": f"Bot {emu.token}"}
        async with http.get(f"{emu.api_base}/users/@me", headers=auth) as r:
            assert r.headers["Content-Type"] == "application/json"
            assert (await r.json())["id"] == str(emu.application_id)
        async with http.get(f"{emu.api_base}/users/@me") as r:
            assert r.status == 401
        async with http.get(f"{emu.api_base}/no/such/route", headers=auth) as r:
            assert r.status == 404 and emu.state.unhandled == ["GET /no/such/route"]
        async with http.get(f"{emu.api_base}/gateway/bot", headers=auth) as r:
            assert (await r.json())["url"] == emu.gateway_url

        gw = await connect(http, emu)
        await identify(gw, emu, GUILDS)
        body = [{"name": "ping", "description": "Ping.", "options": []}]
        url = f"{emu.api_base}/applications/{emu.application_id}/guilds/{emu.guild.id}/commands"
        async with http.put(url, json=body, headers=auth) as r:
            (command,) = await r.json()
        async with http.put(
            url, json=[{"name": "Bad Name", "description": "x"}], headers=auth
        ) as r:
            assert r.status == 400 and (await r.json())["code"] == 50035

        late = await emu.slash_command("ping")
        assert late.payload["data"]["id"] == command["id"]
        hook = f"{emu.api_base}/webhooks/{emu.application_id}/{late.token}"
        async with http.post(hook, json={"content": "too early"}) as r:
            assert (r.status, (await r.json())["code"]) == (404, 10015)
        late.dispatched_at -= 1  # the bot took longer than the callback deadline
        callback = f"{emu.api_base}/interactions/{late.id}/{late.token}/callback"
        async with http.post(callback, json={"type": 5}) as r:
            assert (r.status, (await r.json())["code"]) == (404, 10062)

        fine = await emu.slash_command("ping")
        callback = f"{emu.api_base}/interactions/{fine.id}/{fine.token}/callback?with_response=1"
        async with http.post(callback, json={"type": 5}) as r:
            answer = await r.json()
            assert answer["interaction"]["response_message_loading"] is True
            assert answer["resource"]["type"] == 5
        async with http.post(callback, json={"type": 5}) as r:
            assert (r.status, (await r.json())["code"]) == (400, 40060)

        emu.faults.fail_next(429, methods=["PATCH"], retry_after=0.25)
        original = f"{emu.api_base}/webhooks/{emu.application_id}/{fine.token}/messages/@original"
        async with http.patch(original, json={"content": "x"}) as r:
            assert r.status == 429 and r.headers["Via"]
            assert await r.json() == {
                "message": "You are being rate limited.",
                "retry_after": 0.25,
                "global": False,
                "code": 0,
            }
        fine.expire()
        async with http.patch(original, json={"content": "x"}) as r:
            assert (r.status, await r.json()) == (
                401,
                {"message": "Invalid Webhook Token", "code": 50027},
            )


def test_faults_every_nth_and_seeded_fraction():
    every = Faults()
    every.rate_limit(every=3)
    hits = [every.decide("PATCH", "/x") is not None for _ in range(9)]
    assert hits == [False, False, True] * 3
    assert every.decide("POST", "/x") is None  # only PATCH by default

    def pattern(seed: int) -> list[bool]:
        faults = Faults(seed=seed)
        faults.server_error(fraction=0.3, methods=["*"])
        return [faults.decide("GET", "/y") is not None for _ in range(50)]

    assert pattern(7) == pattern(7) and 5 <= sum(pattern(7)) <= 25


async def test_first_followup_after_thinking_replaces_it(http: aiohttp.ClientSession):
    async with DiscordEmulator() as emu:
        gw = await connect(http, emu)
        await identify(gw, emu, GUILDS)
        url = f"{emu.api_base}/applications/{emu.application_id}/guilds/{emu.guild.id}/commands"
        body = [{"name": "ping", "description": "Ping."}]
        async with http.put(url, json=body, headers={"Authorization": f"Bot {emu.token}"}):
            pass
        interaction = await emu.slash_command("ping")
        callback = f"{emu.api_base}/interactions/{interaction.id}/{interaction.token}/callback"
        async with http.post(callback, json={"type": 5, "data": {"flags": 64}}) as r:
            assert r.status == 204  # no with_response
        hook = f"{emu.api_base}/webhooks/{emu.application_id}/{interaction.token}?wait=1"
        for text in ("first", "second"):
            async with http.post(hook, json={"content": text}) as r:
                assert (await r.json())["content"] == text
        original = interaction.original
        assert original is not None and original.content == "first" and original.ephemeral
        assert [m.content for m in interaction.followups] == ["second"]
        assert not interaction.followups[0].ephemeral


async def test_gateway_refuses_ops_before_identify(http: aiohttp.ClientSession):
    async with DiscordEmulator() as emu:
        gw = await connect(http, emu)
        await gw.recv()  # HELLO
        await gw.send(3, {"status": "online"})
        assert (await gw.ws.receive()).type is aiohttp.WSMsgType.CLOSE
        assert gw.ws.close_code == 4003
