"""`muse tune`, `muse models` and the registry as a user runs them: a database with a few edits,
a dry run, a real (tiny) training run, the adapter registered, listed and made a default; and
the training data rules, dry runs on real databases through the real CLI."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import main as cli
from bot.cli.model_registry import listing
from storage.rows import ModelRecord
from storage.store import Store
from tests.bot.edits_data import community

MUSE = Path(sys.executable).with_name("muse")


def muse(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MUSE_", "DISCORD_"))}
    cache = os.environ.get("MUSE_CACHE_DIR")
    env |= {"MUSE_DB": str(tmp_path / "muse.db"), "MUSE_ADAPTERS_DIR": str(tmp_path / "adapters")}
    env |= {"MUSE_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env |= {"MUSE_CACHE_DIR": cache} if cache else {}
    return subprocess.run(
        [str(MUSE), *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
    )


def test_too_little_data_then_a_dry_run_then_a_tuned_and_registered_adapter(tmp_path: Path):
    db = tmp_path / "muse.db"
    asyncio.run(community(db, 3))
    few = muse(tmp_path, "tune", "--name", "house-style", "--dry-run")
    assert few.returncode == 2 and "sft: 3 rows" in few.stdout and "would not train" in few.stdout

    asyncio.run(community(db, 9, first=3))  # 12 edits now
    dry = muse(tmp_path, "tune", "--name", "house-style", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "sft: 12 rows, 12 kept from 16 members" in dry.stdout and "would train:" in dry.stdout
    assert "model: server 1's" in dry.stdout  # one server's data: its model
    assert not (tmp_path / "adapters").exists()  # a dry run writes nothing

    asyncio.run(community(db, 12, guild=2, first=100))  # a second server's data
    mixed = muse(tmp_path, "tune", "--name", "house-style", "--dry-run")
    assert mixed.returncode == 2 and "2 servers" in mixed.stderr
    assert "--guild ID" in mixed.stderr and "--all-guilds" in mixed.stderr
    both = muse(tmp_path, "tune", "--name", "house-style", "--dry-run", "--all-guilds")
    assert both.returncode == 0 and "sft: 24 rows" in both.stdout
    assert "model: host-wide" in both.stdout
    based = muse(tmp_path, "tune", "--name", "base", "--guild", "1", "--dry-run")
    assert based.returncode == 2 and "names the base model" in based.stderr

    args = ("--name", "house-style", "--guild", "1", "--method", "sft", "--max-steps", "2")
    run = muse(tmp_path, "tune", *args)
    assert run.returncode == 0, run.stderr[-3000:]
    folder = tmp_path / "adapters" / "house-style"
    card = json.loads((folder / "muse.json").read_text())
    assert card["method"] == "sft" and (folder / "adapter_model.safetensors").is_file()
    assert card["data"]["rules"]["dropped"] == dict.fromkeys(
        ("one_edit_per_editor", "identical_texts", "max_share"), 0
    )
    assert "held-out" in run.stdout and "registered" in run.stdout
    assert "model: server 1's" in run.stdout and "--guild 1" in run.stdout
    record = asyncio.run(registered(db, "house-style"))
    assert record.owner_guild_id == 1 and record.data["rules"]["include_self"] is False
    guild_one = pseudonyms(db, [*range(100, 108), *range(200, 208)])  # its askers, editors
    assert len(record.contributors) >= 3 and set(record.contributors) <= guild_one

    again = muse(tmp_path, "tune", "--name", "house-style", "--method", "sft", "--max-steps", "1")
    assert again.returncode == 2 and "house-style" in again.stderr  # a name that exists

    listed = muse(tmp_path, "models")
    assert listed.returncode == 0 and "house-style" in listed.stdout
    assert f"--lora-modules house-style={folder.resolve()}" in listed.stdout
    assert muse(tmp_path, "models", "default", "nope").returncode == 2
    chosen = muse(tmp_path, "models", "default", "house-style", "--guild", "1")
    assert chosen.returncode == 0, chosen.stderr
    assert muse(tmp_path, "models", "retire", "house-style").returncode == 0
    assert "retired" in muse(tmp_path, "models").stdout


async def registered(db: Path, name: str):
    async with Store.open(db) as store:
        return await store.get_model(name)


def pseudonyms(db: Path, user_ids: list[int]) -> set[str]:
    """The export pseudonyms of `user_ids` (computed apart from the code under test)."""
    with sqlite3.connect(db) as conn:
        salt = conn.execute("SELECT value FROM meta WHERE key = 'export_salt'").fetchone()[0]
    return {hashlib.sha256(f"{salt}:{i}".encode()).hexdigest()[:16] for i in user_ids}


# --- the training data rules, through `muse tune --dry-run` on real databases -------------------

EVE = 666


async def texts(store: Store, user: int, prompt: str, output: str) -> int:
    messages = [{"role": "user", "content": prompt}]
    gid = await store.record_generation(
        user_id=user, task="generate", messages=messages, params={}, model_id="base", guild_id=1
    )
    await store.finish_generation(gid, output, "stop", 5, 5, 1.0, 10.0)
    return gid


async def eve_edits_everything(db: Path) -> None:
    """Eve edits 20 members' texts (one twice); 20 other texts are rated 👍 by 20 other
    members; two members ask for the same text, each rated 👍."""
    async with Store.open(db) as store:
        for n in range(20):
            original = await texts(store, 1000 + n, f"Describe place {n}.", f"Place {n}.")
            where = {"guild_id": 1, "channel_id": 2}
            if n == 0:
                await store.record_edit(original, EVE, "An older edit of place 0.", **where)
            await store.record_edit(original, EVE, f"Place {n} glows at dusk.", **where)
        for n in range(20):
            gid = await texts(store, 2000 + n, f"Name a colour, {n}.", f"Colour {n}: teal.")
            await store.record_feedback(gid, 3000 + n, thumbs="up")
        for asker, rater in ((4000, 4002), (4001, 4003)):
            gid = await texts(store, asker, "Say hi.", "Hi there.")
            await store.record_feedback(gid, rater, thumbs="up")


def dry_run(db: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    """`muse tune --dry-run` in this process (the real CLI code path): exit code, stdout."""
    code = cli.main(["tune", "--name", "rules", "--dry-run", "--db", str(db), *flags])
    return code, capsys.readouterr().out


def test_one_members_edits_are_capped_and_the_dry_run_counts_each_rule(tmp_path, capsys):
    db = tmp_path / "muse.db"
    asyncio.run(eve_edits_everything(db))
    code, out = dry_run(db, capsys)
    assert code == 0, out
    # 43 sft rows: eve's older edit of place 0 goes, one "Hi there." goes, and eve, in 20 of
    # the 41 left, keeps 7 of 28: a quarter.
    assert (
        "sft: 43 rows, 28 kept from 50 members "
        "(dropped: one_edit_per_editor 1, identical_texts 1, max_share 13)"
    ) in out
    # Every edit pair is eve's: none may stay.
    assert "dpo: 21 rows, 0 kept from 0 members (dropped: one_edit_per_editor 1, " in out
    assert "max_share 20)" in out
    assert "would train:" in out and out.rstrip().endswith("28 SFT rows (SFT needs 8): SFT")
    code, loose = dry_run(db, capsys, "--max-share", "0.5")
    assert code == 0 and "sft: 43 rows, 41 kept" in loose and "max_share 0)" in loose


async def self_raters(db: Path) -> None:
    """Ten members, each rating only their own text 👍."""
    async with Store.open(db) as store:
        for n in range(10):
            gid = await texts(store, 500 + n, f"Tell me about lamp {n}.", f"Lamp {n} glows.")
            outcome = await store.record_feedback(gid, 500 + n, thumbs="up")
            assert outcome.is_self


def test_self_ratings_do_not_select_rows_unless_include_self(tmp_path, capsys):
    db = tmp_path / "muse.db"
    asyncio.run(self_raters(db))
    code, out = dry_run(db, capsys)
    assert code == 2 and "sft: 0 rows" in out and "kto: 0 rows" in out
    assert "would not train: Too little data" in out
    code, out = dry_run(db, capsys, "--include-self")
    assert code == 0 and "sft: 10 rows, 10 kept from 10 members" in out


async def two_members(db: Path) -> None:
    """Ann asks for twelve texts; Ben rates each 👍."""
    async with Store.open(db) as store:
        for n in range(12):
            gid = await texts(store, 700, f"A riddle about number {n}.", f"Number {n} hides.")
            await store.record_feedback(gid, 701, thumbs="up")


def test_fewer_than_three_contributors_are_refused_with_the_reason(tmp_path, capsys):
    db = tmp_path / "muse.db"
    asyncio.run(two_members(db))
    code, out = dry_run(db, capsys, "--max-share", "1")
    assert code == 2 and "sft: 12 rows, 12 kept from 2 members" in out
    assert "would not train: Too few contributors: the SFT rows come from 2 members" in out
    assert "at least 3" in out
    code, out = dry_run(db, capsys)  # the share rule empties it first, and says so
    assert code == 2 and "max_share 12)" in out
    assert "so that no member supplies more than 0.25 of a training set" in out
    code, out = dry_run(db, capsys, "--max-share", "1", "--min-contributors", "2")
    assert code == 0 and "would train:" in out


def test_flags_are_checked_before_anything_is_read(tmp_path, capsys):
    db = tmp_path / "muse.db"
    for flags, said in (
        (("--name", "Base"), "names the base model"),
        (("--name", "x", "--max-share", "0"), "--max-share must be above 0"),
        (("--name", "x", "--min-contributors", "0"), "--min-contributors must be at least 1"),
    ):
        assert cli.main(["tune", *flags, "--dry-run", "--db", str(db)]) == 2
        assert said in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one owner or the other, not both
        cli.main(["tune", "--name", "x", "--guild", "1", "--all-guilds", "--db", str(db)])


def test_models_lists_adapters_whose_config_says_too_little(tmp_path: Path) -> None:
    """A registered folder whose `adapter_config.json` has a null rank or base (or is not an
    object) is listed, with vLLM's defaults in the command line, rather than crashing."""
    configs = {"null-rank": {"r": None, "base_model_name_or_path": None}, "a-list": [1, 2]}
    records = []
    for name, config in configs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(json.dumps(config))
        records.append(ModelRecord(name, "base-id", str(tmp_path / name), "sft"))
    shown = listing(records, None)
    assert "null-rank" in shown and "a-list" in shown
    assert "vllm serve base-id --enable-lora --max-lora-rank 16" in shown
