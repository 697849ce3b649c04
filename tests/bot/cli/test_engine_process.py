"""`muse run`'s engine process: `muse serve` as a supervised child, reached through the remote
backend; restarted after a SIGKILL, stopped without an orphan. Also `muse serve` as a command."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.cli.engine_process import (
    EngineProcess,
    EngineProcessError,
    child_env,
    engine_process,
    free_port,
    open_engine,
    wants_engine_process,
)
from bot.core.settings import Secret, Settings
from generation.engine.local_engine import Engine
from generation.errors import GenerationFailed
from generation.remote.backend import OpenAIBackend
from generation.types import GenerationRequest, Message
from storage.store import Store
from tests.polling import eventually

ROOT = Path(__file__).resolve().parents[3]
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # a busy 2-core machine
READY_S = 240.0

# `python -m bot.cli serve`, also before `serve` is registered in bot/cli/main.py.
SERVE = (sys.executable, "-m", "bot.cli", "serve")


def make_settings(**changes: Any) -> Settings:
    cache = Path(os.environ.get("MUSE_CACHE_DIR") or Path.home() / ".cache" / "muse")
    values: dict[str, Any] = {
        "device": "cpu",
        "cache_dir": cache,
        "max_tokens": 48,
        "max_batch": 4,
        "shutdown_grace_s": 2.0,
    }
    return Settings(**(values | changes))


def ask(text: str, **kwargs: Any) -> GenerationRequest:
    return GenerationRequest(messages=(Message("user", text),), **{"max_new_tokens": 6, **kwargs})


@contextlib.asynccontextmanager
async def impostor(port: int = 0) -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """Another local user's server on 127.0.0.1:`port` that answers like `muse serve` (200 on
    /health, a model, a text) without the key: (its port, every request it received)."""
    seen: list[dict[str, Any]] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append({"path": request.path, "headers": dict(request.headers), "body": body})
        if request.path == "/health":
            return web.json_response({"status": "ok", "model": "impostor"})
        if request.path == "/v1/models":
            return web.json_response({"object": "list", "data": [{"id": "impostor"}]})
        return web.json_response({"choices": [{"message": {"content": "owned"}}]})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield site.port, seen
    finally:
        await runner.cleanup()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_auto_means_an_accelerator():
    assert not wants_engine_process(make_settings(engine_process="0", device="cuda"))
    assert wants_engine_process(make_settings(engine_process="1", device="cpu"))
    assert not wants_engine_process(make_settings(engine_process="1", backend="openai"))
    assert not wants_engine_process(make_settings(device="cpu"))
    assert wants_engine_process(make_settings(device="cuda"))
    assert wants_engine_process(make_settings(device="mps"))
    import torch

    mps = torch.backends.mps.is_available()
    assert wants_engine_process(make_settings(device="auto")) == (torch.cuda.is_available() or mps)


def test_the_child_gets_the_engine_settings_and_the_key_but_no_other_secret(monkeypatch):
    monkeypatch.setenv("DISCORD_TOKEN", "discord-secret")
    monkeypatch.setenv("MUSE_SERVE_API_KEY", "the-parents-key")
    settings = make_settings(model="/models/x.gguf", queue_size=9, timeout_s=30.0)
    settings = dataclasses.replace(settings, openai_api_key=Secret("sk-remote"))
    env = child_env(settings, "child-key", {"EXTRA": "1"})
    assert env["MUSE_SERVE_API_KEY"] == "child-key" and env["EXTRA"] == "1"
    assert (env["MUSE_MODEL"], env["MUSE_DEVICE"], env["MUSE_QUEUE_SIZE"]) == (
        "/models/x.gguf",
        "cpu",
        "9",
    )
    assert (env["MUSE_TIMEOUT_S"], env["MUSE_BACKEND"], env["MUSE_ENGINE_PROCESS"]) == (
        "35",  # the requests' own deadline (30 s) ends them first
        "local",
        "0",
    )
    assert env["DISCORD_TOKEN"] == "" and env["MUSE_OPENAI_API_KEY"] == ""
    child = EngineProcess(settings)
    assert child.key not in repr(child) and child.key not in repr(child.remote_config())
    assert child.remote_config().base_url == f"http://127.0.0.1:{child.port}/v1"
    assert child.remote_config().runtime_lora  # the loop's new adapters go in at run time


async def test_the_child_serves_comes_back_after_a_kill_and_stops_with_its_parent():
    child = await EngineProcess(
        make_settings(), env=ENV, command=SERVE, ready_timeout_s=READY_S
    ).start()
    remote = OpenAIBackend(child.remote_config(), endpoint=child.endpoint)
    process = child._process
    try:
        assert (await remote.wait_ready()).model_id
        first = await remote.generate(ask("Say hello."))
        assert first.tokens_out > 0 and first.tokens_in > 0
        # SIGKILL while a request streams: it fails clearly; the supervisor starts a new child.
        stream = remote.stream(ask("Tell me a long story.", max_new_tokens=48, ignore_eos=True))
        await anext(stream)
        killed, old_port, old_key = child.pid, child.port, child.key
        os.kill(killed, signal.SIGKILL)
        with pytest.raises(GenerationFailed, match="broke after"):
            async for _ in stream:
                pass
        # Another local user takes the dead child's port as soon as it is free, and a request
        # is sent meanwhile: it waits for the new child, on a fresh port with a fresh key.
        assert await eventually(lambda: gone(killed), 10)
        async with impostor(old_port) as (_, seen):
            waiting = asyncio.create_task(remote.generate(ask("my private words")))
            assert await eventually(lambda: child.restarts == 1, READY_S)
            assert child.pid != killed
            assert child.port != old_port and child.key != old_key
            assert (await waiting).tokens_out > 0
            later = await remote.generate(ask("Say hello."))
        assert seen == []
        assert later.text == first.text or later.tokens_out > 0
        process = child._process
        assert child.key not in child.last_lines()
    finally:
        await remote.aclose()
        await child.aclose()
    assert process.returncode == 0  # SIGTERM: a clean stop
    assert gone(process.pid)


async def test_an_impostor_on_the_childs_port_receives_no_prompt_and_no_key(monkeypatch):
    async with impostor() as (port, seen):
        # It holds the port the child is given: the child cannot listen there and exits.
        monkeypatch.setattr("bot.cli.engine_process.free_port", lambda: port)
        with pytest.raises(EngineProcessError, match="exited with status 1"):
            async with engine_process(
                make_settings(), env=ENV, command=SERVE, ready_timeout_s=60
            ) as remote:
                await remote.generate(ask("my private words"))
    assert seen and {request["path"] for request in seen} == {"/health"}
    for request in seen:  # challenged, never told anything
        assert "Authorization" not in request["headers"] and request["body"] == b""
        assert len(request["headers"]["X-Muse-Challenge"]) >= 32


async def test_a_child_that_cannot_load_its_model_fails_with_its_last_lines():
    settings = make_settings(model=str(ROOT / "no-such-model.gguf"))
    started = time.monotonic()
    with pytest.raises(EngineProcessError) as failed:
        async with engine_process(settings, env=ENV, command=SERVE, ready_timeout_s=READY_S):
            pass
    message = str(failed.value)
    assert "exited with status 1" in message and "no-such-model.gguf" in message
    assert time.monotonic() - started < READY_S


async def run_serve(*args: str, stdin: int | None = None, **env: str):
    return await asyncio.create_subprocess_exec(
        *SERVE,
        *args,
        cwd=ROOT,
        env={**os.environ, **ENV, "MUSE_DEVICE": "cpu", **env},
        stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_muse_serve_refuses_what_it_cannot_do_safely():
    wide = await run_serve("--host", "0.0.0.0", MUSE_SERVE_API_KEY="")
    remote = await run_serve(MUSE_BACKEND="openai")
    short = await run_serve(MUSE_SERVE_API_KEY="guessable-key")
    _, said = await wide.communicate()
    assert wide.returncode == 2 and b"without an API key" in said
    _, said = await short.communicate()
    assert short.returncode == 2 and b"at least 16" in said and b"guessable-key" not in said
    _, said = await remote.communicate()
    assert remote.returncode == 2 and b"MUSE_BACKEND=openai" in said


async def test_muse_serve_stops_when_its_parent_goes():
    port = free_port()
    child = await run_serve(
        "--port", str(port), "--exit-with-parent", stdin=asyncio.subprocess.PIPE
    )
    try:
        async with aiohttp.ClientSession() as http:

            async def healthy() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            deadline = time.monotonic() + READY_S
            while not await healthy():
                assert child.returncode is None and time.monotonic() < deadline
                await asyncio.sleep(0.2)
        child.stdin.close()  # what the parent's death does
        _, said = await asyncio.wait_for(child.communicate(), 60)
        assert child.returncode == 0 and b"parent process is gone" in said
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_open_engine_without_a_child_is_the_in_process_engine(tmp_path):
    settings = make_settings(engine_process="0")
    async with Store.open(tmp_path / "muse.db") as store, open_engine(settings, store) as engine:
        assert isinstance(engine, Engine)
        assert (await engine.generate(ask("Hi", max_new_tokens=2))).tokens_out > 0
    assert not engine._thread.is_alive()
