"""`muse tune`, `muse models` and the registry as a user runs them: a database with a few edits,
a dry run, a real (tiny) training run, the adapter registered, listed and made a default."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from bot.cli.models import listing
from storage.models import ModelRecord
from storage.store import Store

MUSE = Path(sys.executable).with_name("muse")


async def community(db: Path, edits: int) -> None:
    """`edits` answered prompts, each corrected by a member."""
    async with Store.open(db) as store:
        for n in range(edits):
            messages = [{"role": "user", "content": f"Say something kind about topic {n}."}]
            gid = await store.record_generation(
                user_id=1, task="generate", messages=messages, params={}, model_id="base"
            )
            await store.finish_generation(gid, f"Topic {n} is fine.", "stop", 5, 5, 1.0, 10.0)
            await store.record_edit(
                gid, 2, f"Verily, topic {n} is wonderful.", guild_id=1, channel_id=2
            )


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
    asyncio.run(community(tmp_path / "muse.db", 3))
    few = muse(tmp_path, "tune", "--name", "house-style", "--dry-run")
    assert few.returncode == 2 and "sft: 3 rows" in few.stdout and "would not train" in few.stdout

    asyncio.run(community(tmp_path / "muse.db", 9))  # 12 edits now
    dry = muse(tmp_path, "tune", "--name", "house-style", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "sft: 12 rows" in dry.stdout and "would train:" in dry.stdout
    assert not (tmp_path / "adapters").exists()  # a dry run writes nothing

    run = muse(tmp_path, "tune", "--name", "house-style", "--method", "sft", "--max-steps", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    folder = tmp_path / "adapters" / "house-style"
    card = json.loads((folder / "muse.json").read_text())
    assert card["method"] == "sft" and (folder / "adapter_model.safetensors").is_file()
    assert "held-out" in run.stdout and "registered" in run.stdout

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
