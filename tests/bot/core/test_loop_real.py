"""The learning loop for real: `muse run` as a subprocess against the Discord emulator, the real
default model and real training. A community's members make marked ✏️ edits; the loop starts a
tune by itself; the bot is killed (SIGKILL) mid-tune and nothing half-written is served or
registered; started again (the engine now in its own `muse serve` child, so the adapter goes in
through the runtime-LoRA endpoint), it retrains, serves and announces the challenger, members vote
blind, the loop promotes it, and the server's next texts carry the marker — all in one process
that never restarts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.bot.bot_process import BotProcess, muse_run
from tests.bot.community import announced, arena_reply, ephemeral, rows, vote_final
from tests.discord_emulator import DiscordEmulator, InteractionRecord
from tests.polling import eventually

pytestmark = pytest.mark.timeout(1500)

MARKER = "Verily,"
MEMBERS = 8  # askers and editors in turn: none supplies over a quarter of the rows
TOPICS = (
    "the moon", "cats", "rain", "coffee", "chess", "trains", "autumn", "bread", "the ocean",
    "owls", "jazz", "mountains", "libraries", "bicycles", "tea", "snow", "gardens", "clocks",
    "rivers", "candles", "maps", "violins", "deserts", "honey",
)  # fmt: skip
VOTERS = ("bob", "moderator", "owner")
ENV = {
    "MUSE_MAX_TOKENS": "16",
    "MUSE_USER_PER_MINUTE": "0",
    "MUSE_LOOP_CHECK_S": "0.5",
    "MUSE_SHUTDOWN_GRACE_S": "2",
}


async def finished(record: InteractionRecord, timeout_s: float = 180) -> InteractionRecord:
    """The reply once it carries its rating buttons (the real model on a shared CPU: slow)."""
    await record.wait_until(
        lambda i: (
            i.original is not None and any("muse:rate:" in c for c in i.original.custom_ids())
        ),
        timeout=timeout_s,
    )
    return await record.wait_finished(timeout=timeout_s)


def community(emu: DiscordEmulator) -> None:
    for n in range(MEMBERS):
        emu.add_user(f"asker{n}")
        emu.add_user(f"editor{n}")


async def teach(emu: DiscordEmulator) -> None:
    """Each topic asked by one member; another rewrites the answer to begin with the marker."""
    for i, topic in enumerate(TOPICS):
        asked = await emu.slash_command(
            "generate", {"prompt": f"Tell me about {topic}."}, user=f"asker{i % MEMBERS}"
        )
        story = await finished(asked)
        edit = next(c for c in story.original.custom_ids() if c.startswith("muse:edit:"))
        shown = await emu.press_button(story.original, edit, user=f"editor{i % MEMBERS}")
        await shown.wait_callback()
        marked = f"{MARKER} {topic} is a fine thing to wonder about, friend."
        await finished(await emu.submit_modal(shown, {"text": marked}))


async def turn_on(emu: DiscordEmulator) -> None:
    options = {"enabled": True, "channel": emu.channel.id, "min_examples": 8, "min_votes": 6}
    said = await ephemeral(await emu.slash_command("loop set", options, user="manager"))
    assert said.content.startswith("✅ Saved."), said.content


def loop_row(db: Path) -> tuple[str, dict]:
    ((state, progress),) = rows(db, "SELECT state, progress_json FROM loops")
    return state, json.loads(progress)


def children(pid: int, needle: str) -> list[int]:
    """The processes whose parent is `pid` and whose command line holds `needle`."""
    found = []
    for entry in os.listdir("/proc"):  # noqa: ASYNC240 - a handful of small reads
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:  # noqa: ASYNC230
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmd:  # noqa: ASYNC230
                line = cmd.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid and needle in line:
            found.append(int(entry))
    return found


def names_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def battle(emu: DiscordEmulator) -> None:
    """One /arena; every voter picks the side that wrote the marker (the only way a member can
    tell the tuned model: the battle is blind), and a second press changes nothing."""
    shown = await emu.slash_command("arena", {"prompt": "Tell me about owls."})
    reply = await arena_reply(shown, timeout_s=180)
    texts = [embed.get("description", "") for embed in reply.embeds]
    marked = [side for side, text in zip("AB", texts, strict=False) if MARKER in text]
    assert len(marked) == 1, texts
    await vote_final(emu, reply, marked[0], VOTERS)


async def predictable(emu: DiscordEmulator) -> None:
    """The server's texts at temperature 0 (/settings): each model's best guess, so what a blind
    voter sees, and the texts after the promotion, show what the model learned, not a draw."""
    options = {"temperature": 0.0}
    said = await ephemeral(await emu.slash_command("settings", options, user="manager"))
    assert said.content.startswith("✅ Saved."), said.content


async def kill_mid_tune(bot: BotProcess, db: Path, adapters: Path) -> None:
    """SIGKILL the bot once its tune has taken a training step; its tune dies with it and
    leaves no adapter behind (only a `.NAME.tmp-…` folder, which is never served)."""
    assert await eventually(
        lambda: loop_row(db) == ("training", loop_row(db)[1]) and loop_row(db)[1].get("step"),
        timeout_s=600,
    ), (loop_row(db), bot.output()[-3000:])
    tunes = children(bot.process.pid, "loop tune")
    assert len(tunes) == 1, tunes
    bot.kill()
    assert await bot.wait_exit() == -9
    assert await eventually(lambda: not os.path.exists(f"/proc/{tunes[0]}"), timeout_s=15)
    assert loop_row(db)[0] == "training"  # the next start runs it again
    assert rows(db, "SELECT name FROM models") == []
    left = names_in(adapters)
    assert all(name.startswith(".") for name in left), left


async def test_the_loop_learns_a_communitys_marker_and_a_kill_mid_tune_serves_no_half_adapter(
    emu: DiscordEmulator, tmp_path: Path
):
    db, adapters = tmp_path / "muse.db", tmp_path / "adapters"
    env = {**ENV, "MUSE_ADAPTERS_DIR": str(adapters)}
    community(emu)
    async with muse_run(emu, db, ready_timeout_s=180, **env) as first:
        before = await finished(await emu.slash_command("generate", {"prompt": "Hello there."}))
        assert MARKER not in before.original.content
        await teach(emu)
        await turn_on(emu)  # the loop tunes by itself: no /loop tune, no shell
        await kill_mid_tune(first, db, adapters)

    name = f"g{emu.guild.id}-v1"
    env["MUSE_ENGINE_PROCESS"] = "1"  # the adapter reaches `muse serve` at run time
    async with muse_run(emu, db, ready_timeout_s=180, **env) as bot:
        pid, identified = bot.process.pid, emu.gateway.count("identify")
        assert await eventually(
            lambda: announced(emu, f"A new model, **{name}**"), timeout_s=900
        ), (loop_row(db), bot.output()[-4000:])
        assert (adapters / name / "adapter_model.safetensors").is_file()
        assert names_in(adapters) == [name]  # the dead run's tmp folder tidied
        card = json.loads((adapters / name / "muse.json").read_text())
        assert card["metrics"]["after"]["loss"] < card["metrics"]["before"]["loss"], card
        await predictable(emu)
        for _ in range(2):  # 3 voters x 2 battles = the 6 final votes /loop set asked for
            await battle(emu)
        assert await eventually(
            lambda: announced(emu, f"🏆 **{name}** beat **base**"), timeout_s=120
        ), (loop_row(db), bot.output()[-3000:])
        after = []
        for topic in ("dragons", "the sea", "winter"):
            asked = {"prompt": f"Tell me about {topic}."}
            text = await finished(await emu.slash_command("generate", asked))
            after.append(text.original.content)
        assert all(text.startswith(MARKER) for text in after), after
        assert bot.returncode is None and bot.process.pid == pid  # no restart, same process
        assert emu.gateway.count("identify") == identified
    events = [e for (e,) in rows(db, "SELECT event FROM loop_events ORDER BY id")]
    assert events == ["tuned", "arena", "promoted"]
