"""Sharding: `MUSE_SHARDS` / `MUSE_SHARD_IDS`, one process or several sharing one database."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bot.core.settings import Settings, SettingsError
from bot.discord.client import MuseBot, ShardedMuseBot, create_bot
from bot.discord.sharding import ShardPlan, plan_shards
from storage.store import Store
from tests.bot.community import finished
from tests.bot.fake_openai import FakeOpenAI
from tests.bot.fakes import ReplayEngine
from tests.discord_emulator import DiscordEmulator, run_bot

MUSE = Path(sys.executable).with_name("muse")

# --- the settings ------------------------------------------------------------------------------


def plan(shards: str = "", ids: tuple[int, ...] = (), backend: str = "openai") -> ShardPlan | None:
    return plan_shards(Settings(shards=shards, shard_ids=ids, backend=backend))


def test_plans_for_one_process_and_for_several():
    assert plan() is None
    assert plan("auto") == ShardPlan(count=None)
    assert plan("AUTO ") == ShardPlan(count=None)
    assert plan("4") == ShardPlan(count=4)
    assert plan("4", (3, 2)) == ShardPlan(count=4, ids=(2, 3))
    assert plan("4", (2, 3)).is_partial and not plan("2", (0, 1)).is_partial
    # all shards in one process is fine with the local backend; a split is not
    assert plan("2", (1, 0), backend="local") == ShardPlan(count=2, ids=(0, 1))
    assert plan("4", backend="local") == ShardPlan(count=4)
    assert plan("4", (0, 1)).describe() == "sharded: shards 0,1 of 4 in this process"


@pytest.mark.parametrize(
    ("shards", "ids", "backend", "says"),
    [
        ("0", (), "openai", "MUSE_SHARDS='0' must be auto or a positive whole number"),
        ("-2", (), "openai", "must be auto or a positive whole number"),
        ("many", (), "openai", "MUSE_SHARDS='many' must be auto or a positive whole number"),
        ("", (0,), "openai", "MUSE_SHARD_IDS needs MUSE_SHARDS=N"),
        ("auto", (0,), "openai", "needs a fixed MUSE_SHARDS=N, not auto"),
        ("4", (0, 4), "openai", "MUSE_SHARD_IDS=0,4 names shard 4, but MUSE_SHARDS=4 has"),
        ("4", (-1,), "openai", "names shard -1"),
        ("4", (1, 1), "openai", "lists a shard twice: 1,1"),
        ("4", (0, 1), "local", "runs 2 of 4 shards, so other processes must run the rest"),
    ],
)
def test_bad_shard_settings_are_refused_with_the_setting_named(shards, ids, backend, says):
    with pytest.raises(SettingsError) as refused:
        plan(shards, ids, backend)
    assert says in str(refused.value)


def test_shard_ids_must_be_numbers(monkeypatch):
    monkeypatch.setenv("MUSE_SHARD_IDS", "0,one")
    with pytest.raises(SettingsError, match="MUSE_SHARD_IDS must be a comma-separated list"):
        Settings.load(env_file=None)


def test_create_bot_picks_the_base_class_and_keeps_the_keyword_arguments():
    common: dict[str, Any] = {"store": None, "engine": ReplayEngine(), "presets": {}}
    plain = create_bot(settings=Settings(), **common)
    assert type(plain) is MuseBot and plain.shard_count is None

    split = create_bot(settings=Settings(shards="4", shard_ids=(2, 3), backend="openai"), **common)
    assert isinstance(split, ShardedMuseBot) and isinstance(split, MuseBot)
    assert (split.shard_count, split.shard_ids) == (4, [2, 3])
    auto = create_bot(settings=Settings(shards="auto"), **common)
    assert isinstance(auto, ShardedMuseBot) and auto.shard_count is None

    with pytest.raises(SettingsError, match="MUSE_BACKEND=openai"):
        create_bot(settings=Settings(shards="4", shard_ids=(0,)), **common)


class QuickShardedMuse(ShardedMuseBot):
    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """No 5 s pause between IDENTIFYs: the emulator has no identify rate limit."""


async def test_auto_shards_take_discords_recommended_count(tmp_path: Path):
    async with (
        DiscordEmulator(guilds=4, shards=3) as emu,
        Store.open(tmp_path / "muse.db") as store,
    ):
        settings = Settings(shards="auto", guild_ids=tuple(g.id for g in emu.guilds))
        bot = QuickShardedMuse(settings=settings, store=store, engine=ReplayEngine(), presets={})
        async with run_bot(bot, emu):
            assert bot.shard_count == 3 and sorted(bot.shards) == [0, 1, 2]
            assert {g.id: g.shard_id for g in bot.guilds} == {
                g.id: (g.id >> 22) % 3 for g in emu.guilds
            }
            assert len(emu.commands(emu.guilds[-1])) > 10  # the cogs loaded and synced


# --- processes -------------------------------------------------------------------------------


def muse_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The test runner's environment without its Muse settings, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MUSE_", "DISCORD_"))}
    env.update(HF_HUB_OFFLINE="1", MUSE_DB=str(tmp_path / "muse.db"), MUSE_LOG_LEVEL="INFO")
    return env | settings


@asynccontextmanager
async def muse_run(tmp_path: Path, name: str, env: dict[str, str]) -> AsyncIterator[Any]:
    """`muse run` as a child process (its output in tmp_path/name.log); SIGTERM at the end."""
    log = (tmp_path / f"{name}.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        str(MUSE), "run", cwd=tmp_path, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
    )
    process.log_path = tmp_path / f"{name}.log"  # type: ignore[attr-defined]
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


def logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*.log"))


async def test_local_backend_refuses_a_split_over_several_processes(tmp_path: Path):
    env = muse_env(tmp_path, DISCORD_TOKEN="MTIz.abc.def", MUSE_SHARDS="4", MUSE_SHARD_IDS="0,1")
    async with muse_run(tmp_path, "local", env) as process:
        code = await asyncio.wait_for(process.wait(), 30)
    output = (tmp_path / "local.log").read_text()
    assert code == 2, output
    assert output.startswith("muse run: MUSE_SHARD_IDS=0,1 runs 2 of 4 shards"), output
    assert "MUSE_BACKEND=openai" in output and "unset MUSE_SHARD_IDS" in output
    assert not (tmp_path / "muse.db").exists()  # refused before anything started


async def test_two_processes_split_four_shards_over_one_database(tmp_path: Path):
    async with FakeOpenAI() as llm, DiscordEmulator(guilds=8, shards=4) as emu:
        guilds = {}
        for guild in emu.guilds:
            guilds.setdefault((guild.id >> 22) % 4, guild)
        assert sorted(guilds) == [0, 1, 2, 3]  # the guilds spread over all four shards
        env = muse_env(
            tmp_path,
            **emu.env(),
            MUSE_BACKEND="openai",
            MUSE_OPENAI_BASE_URL=llm.base_url,
            MUSE_SHARDS="4",
        )
        a = env | {"MUSE_SHARD_IDS": "0,1", "MUSE_OPENAI_API_KEY": "process-a"}
        b = env | {"MUSE_SHARD_IDS": "2,3", "MUSE_OPENAI_API_KEY": "process-b"}
        async with muse_run(tmp_path, "a", a) as first, muse_run(tmp_path, "b", b) as second:
            try:
                await emu.wait_connected(sessions=4, timeout=60)
            except TimeoutError:
                pytest.fail(f"four shards did not connect\n{logs(tmp_path)}")
            shards = sorted(s.shard for s in emu.gateway.live_sessions() if s.shard)
            assert shards == [(0, 4), (1, 4), (2, 4), (3, 4)]
            for shard, guild in sorted(guilds.items()):
                record = await emu.slash_command(
                    "generate", {"prompt": f"a story on shard {shard}"}, guild=guild
                )
                reply = await finished(record)
                process = "process-a" if shard < 2 else "process-b"
                assert f"answered for {process}" in reply.original.content, logs(tmp_path)
            first.send_signal(signal.SIGTERM)
            second.send_signal(signal.SIGTERM)
            codes = await asyncio.gather(first.wait(), second.wait())
            assert codes == [0, 0], logs(tmp_path)

    assert {key for key, _ in llm.requests} == {"process-a", "process-b"}
    with sqlite3.connect(tmp_path / "muse.db") as db:
        rows = db.execute("SELECT guild_id, status, output FROM generations ORDER BY id").fetchall()
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert [(guild_id, status) for guild_id, status, _ in rows] == [
        (guilds[shard].id, "done") for shard in range(4)
    ]
    for shard, (_, _, output) in enumerate(rows):
        assert output.endswith(f"(answered for process-{'ab'[shard // 2]}).")
