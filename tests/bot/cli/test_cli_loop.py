"""`muse loop status` and `muse loop tune` from the shell, on real SQLite files."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from pathlib import Path

import pytest

from bot.cli import main as cli
from storage.rows import ModelRecord
from storage.store import Store
from tests.bot.edits_data import community
from tests.cli_process import run_muse

GUILD = 42


async def a_loop_in_the_arena(db: Path) -> None:
    async with Store.open(db) as store:
        await store.update_loop(GUILD, enabled=True, channel_id=7, min_examples=8)
        await store.register_model(
            ModelRecord("g42-v1", "base", "/a/g42-v1", "sft", owner_guild_id=GUILD)
        )
        await store.add_loop_event(GUILD, "tuned", "g42-v1", "trained on this server's data")
        await store.add_loop_event(GUILD, "arena", "g42-v1", "challenges base")
        await store.update_loop(GUILD, state="arena", challenger="g42-v1")
        await store.update_loop(99, enabled=False)  # off: not listed


def test_status_prints_each_guild_and_the_contracts_json(tmp_path: Path) -> None:
    db = tmp_path / "muse.db"
    asyncio.run(a_loop_in_the_arena(db))
    done = run_muse("loop", "status", "--json", "--db", str(db))
    assert done.returncode == 0, done.stderr
    (shown,) = json.loads(done.stdout)
    assert {"guild", "enabled", "state", "default", "challenger", "rows_since_tune", "votes",
            "p_better", "history"} <= set(shown)  # fmt: skip
    assert (shown["guild"], shown["enabled"], shown["state"]) == (GUILD, True, "arena")
    assert (shown["default"], shown["challenger"], shown["votes"]) == ("base", "g42-v1", 0)
    assert [e["event"] for e in shown["history"]] == ["arena", "tuned"]  # newest first
    assert set(shown["history"][0]) == {"event", "model", "reason", "utc"}
    one = run_muse("loop", "status", "--guild", str(GUILD), "--json", "--db", str(db))
    assert json.loads(one.stdout)["challenger"] == "g42-v1"
    text = run_muse("loop", "status", "--db", str(db)).stdout
    assert f"guild {GUILD}" in text and "Challenger: **g42-v1**" in text and "guild 99" not in text


def test_tune_says_what_is_missing_and_runs_one_at_a_time(tmp_path: Path) -> None:
    db = tmp_path / "muse.db"
    asyncio.run(a_loop_in_the_arena(db))
    dry = run_muse("loop", "tune", "--guild", str(GUILD), "--dry-run", "--db", str(db))
    assert dry.returncode == 2 and "would not train" in dry.stdout + dry.stderr
    lock = os.open(f"{db}.tune.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another tune holds the database
        busy = run_muse("loop", "tune", "--guild", str(GUILD), "--db", str(db))
    finally:
        os.close(lock)
    assert busy.returncode == 3 and "another tune is running" in busy.stderr


def test_a_guilds_model_is_listed_with_its_owner_and_defaults_only_there(tmp_path: Path) -> None:
    db = tmp_path / "muse.db"
    asyncio.run(a_loop_in_the_arena(db))
    listed = run_muse("models", "--db", str(db))
    assert listed.returncode == 0 and "guild 42" in listed.stdout
    for where in ([], ["--guild", "7"]):
        refused = run_muse("models", "default", "g42-v1", *where, "--db", str(db))
        assert refused.returncode == 2 and "belongs to guild 42" in refused.stderr
    chosen = run_muse("models", "default", "g42-v1", "--guild", str(GUILD), "--db", str(db))
    assert chosen.returncode == 0, chosen.stderr


def test_the_loop_learns_edits_by_sft_unless_told_otherwise(tmp_path: Path, capsys):
    db = tmp_path / "muse.db"
    asyncio.run(community(db, 12))  # twelve edits: twelve preference pairs too
    dry = ["loop", "tune", "--guild", "1", "--dry-run", "--db", str(db)]
    assert cli.main(dry) == 0
    assert "would train: requested; 12 SFT rows" in capsys.readouterr().out
    assert cli.main([*dry, "--method", "auto"]) == 0
    assert "would train: 12 preference pairs (DPO needs 8): DPO" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main([*dry, "--method", "ppo"])
