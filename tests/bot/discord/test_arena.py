"""The loop closed, end to end: an adapter (made with PEFT's API) registered beside the base,
`/model` lists and sets it, a generation names it; `/arena` battles blind, votes reveal the
sides, and `/leaderboard` and `muse leaderboard --json` rank the models as the votes say."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model

from generation.engine.local_engine import Engine, EngineConfig
from generation.model.loading import LoadedModel
from storage.rows import ModelRecord
from storage.store import Store
from tests.bot.community import arena_reply, ephemeral, finished, muse, refusal, rows
from tests.cli_process import run_muse
from tests.discord_emulator import DiscordEmulator

ADAPTER = "house-style"
VOTERS = ("alice", "bob", "manager")


@pytest.fixture(scope="module")
def adapter_folder(loaded_model: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small LoRA adapter with non-trivial weights, in PEFT's folder format."""
    folder = tmp_path_factory.mktemp("adapters") / ADAPTER
    config = LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(copy.deepcopy(loaded_model.model), config).save_pretrained(folder)
    return folder


@pytest.fixture
async def two_models(loaded_model: LoadedModel, adapter_folder: Path) -> AsyncIterator[Engine]:
    """The base and the adapter served together, on a copy of the model (the engine installs
    adapter layers into it, which the session's shared model must never see)."""
    own = dataclasses.replace(loaded_model, model=copy.deepcopy(loaded_model.model))
    config = EngineConfig(max_new_tokens=12, adapters={ADAPTER: adapter_folder})
    engine = Engine(lambda: own, config).start()
    await engine.wait_ready()
    yield engine
    await engine.aclose()


async def test_model_then_arena_then_leaderboard(
    emu: DiscordEmulator, tmp_path: Path, two_models: Engine, adapter_folder: Path
):
    db = tmp_path / "muse.db"
    async with Store.open(db) as store:
        await store.register_model(ModelRecord(ADAPTER, "base", str(adapter_folder), "sft"))
    async with muse(emu, db, two_models, max_tokens=12, user_per_minute=0):
        # /model lists the base and the adapter, sets the adapter; a generation names it
        listed = await refusal(await emu.slash_command("model", {}, user="manager"))
        assert "`base` ← this server's default" in listed and f"`{ADAPTER}`" in listed
        assert "Manage Server" in await refusal(
            await emu.slash_command("model", {"name": ADAPTER}, user="alice")
        )
        assert "not a model Muse serves" in await refusal(
            await emu.slash_command("model", {"name": "nope"}, user="manager")
        )
        chosen = await refusal(await emu.slash_command("model", {"name": ADAPTER}, user="manager"))
        assert ADAPTER in chosen
        story = await finished(await emu.slash_command("generate", {"prompt": "Say hi."}))
        assert story.original.content.splitlines()[-1].startswith(f"-# {ADAPTER} · ")
        assert rows(db, "SELECT model_id FROM generations WHERE id = 1") == [(ADAPTER,)]

        # /arena: 8 battles, 3 voters each; the adapter's side wins 2 of 3 votes
        widths = []
        for n in range(8):
            battle = await emu.slash_command("arena", {"prompt": f"A line about rain, take {n}."})
            reply = await arena_reply(battle)
            assert ADAPTER not in reply.content + json.dumps(reply.embeds)  # blind
            votes = [c for c in reply.custom_ids() if c.startswith("muse:arena:")]
            first = int(votes[0].split(":")[2])  # muse:arena:<A>:<B>:<winner>
            ((model_a,),) = rows(db, "SELECT model_id FROM generations WHERE id = ?", first)
            adapter_side = "A" if model_a == ADAPTER else "B"
            other_side = "B" if adapter_side == "A" else "A"
            for voter, side in zip(VOTERS, (adapter_side, adapter_side, other_side), strict=True):
                custom = next(c for c in reply.custom_ids() if c.endswith(f":{side}"))
                said = (await ephemeral(await emu.press_button(reply, custom, user=voter))).content
                assert said.startswith("Thanks — saved") and ADAPTER in said  # the reveal
                assert "A was written by **" in said
            if n in (3, 7):
                board = json.loads(await leaderboard_json(db))
                widths.append({r["model"]: r["upper"] - r["lower"] for r in board})

        shown = await emu.slash_command("leaderboard", {})
        await shown.wait_until(lambda i: any(m.embeds for m in i.messages), timeout=60)
        message = next(m for m in shown.messages if m.embeds)
        table = message.embeds[0]["description"]
        assert table.splitlines()[0].startswith(f"**1. {ADAPTER}**")
        assert message.attachments and message.attachments[0].filename == "muse-leaderboard.png"

    board = json.loads(await leaderboard_json(db))
    assert [r["model"] for r in board][0] == ADAPTER and len(board) == 2
    assert set(board[0]) == {"model", "score", "lower", "upper", "votes", "win_rate"}
    assert board[0]["votes"] == 24 and abs(board[0]["win_rate"] - 2 / 3) < 1e-3
    assert board[0]["lower"] <= board[0]["score"] <= board[0]["upper"]
    early, late = widths
    assert all(late[m] < early[m] for m in late)  # more votes, narrower intervals


async def leaderboard_json(db: Path) -> str:
    """`muse leaderboard --json`'s output, from a process of its own as beside a live bot."""
    done = await asyncio.to_thread(run_muse, "leaderboard", "--json", "--db", str(db))
    assert done.returncode == 0, done.stderr
    return done.stdout
