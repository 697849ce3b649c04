"""Console mode: the command-line parser alone, then `muse console` / `muse run` as real
processes (the default model, a small token cap) through a pipe and a pseudo-terminal."""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from bot.cli import main as cli
from bot.console.parse import (
    COMMANDS,
    RATE_KEYS,
    ConsoleError,
    Key,
    help_text,
    parse_line,
    parse_rating,
    parse_vote,
)

MUSE = Path(sys.executable).with_name("muse")
TIMEOUT_S = 240
NAMES = ("Innkeeper", "Stranger")


# --- the parser, pure ------------------------------------------------------------------------


def test_quoted_options_and_typed_values() -> None:
    parsed = parse_line('/dialogue scene="a tavern" characters="Innkeeper, Stranger" lines=4')
    assert parsed is not None
    assert parsed.command == "dialogue"
    assert parsed.values == {"scene": "a tavern", "characters": "Innkeeper, Stranger", "lines": 4}
    parsed = parse_line("/generate prompt='say hi' temperature=0.7 max-tokens=64")
    assert parsed is not None
    assert parsed.values == {"prompt": "say hi", "temperature": 0.7, "max_tokens": 64}


def test_bare_text_fills_the_main_field() -> None:
    assert parse_line("/story a dragon length=short").values == {  # type: ignore[union-attr]
        "prompt": "a dragon",
        "length": "short",
    }
    assert parse_line('/poem "the sea, at night"').values == {"topic": "the sea, at night"}  # type: ignore[union-attr]
    assert parse_line("/history 3").values == {"count": 3}  # type: ignore[union-attr]
    assert parse_line("/privacy deny").values == {"training": "deny"}  # type: ignore[union-attr]
    assert parse_line("/EXIT").command == "quit"  # type: ignore[union-attr]
    assert parse_line("   ") is None


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("/stroy a dragon", "unknown command /stroy — try /help (did you mean /story?)"),
        ("/zzzz", "unknown command /zzzz — try /help"),
        (
            "/story prompt=x colour=red",
            "/story has no option colour; its options are prompt, length",
        ),
        ("/stats detail=1", "/stats has no option detail; it takes no options"),
        ("/story", "/story needs prompt"),
        ("/story x length=tiny", "length must be one of short, medium, long, not 'tiny'"),
        ("/dialogue scene=x characters=A lines=21", "lines must be from 2 to 20, not 21"),
        ("/dialogue scene=x characters=A lines=1", "lines must be from 2 to 20, not 1"),
        ("/dialogue scene=x characters=A lines=four", "lines must be a whole number, not 'four'"),
        ("/dialogue scene=x characters=', ,'", "characters needs at least one name"),
        ("/dialogue scene=x characters=A tone=" + "t" * 101, "tone must be at most 100"),
        ("/generate x temperature=2.5", "temperature must be from 0 to 2, not 2.5"),
        ("/generate x max_tokens=8", "max_tokens must be from 16 to 1024, not 8"),
        ("/generate " + "w" * 1001, "prompt must be at most 1000 characters"),
        ("/generate prompt=", "prompt cannot be empty"),
        ("/generate x prompt=y", "prompt is given twice"),
        ("/compare x task=chat", "task must be one of story, poem, describe, generate"),
        ("/history count=26", "count must be from 1 to 25, not 26"),
        ("/privacy training=maybe", "training must be one of allow, deny"),
        ("/forget now", "/forget takes no text"),
        ('/story "unclosed', "could not read that line"),
        ("story a dragon", "commands start with /"),
    ],
)
def test_refusals_say_why(line: str, says: str) -> None:
    with pytest.raises(ConsoleError) as refused:
        parse_line(line)
    assert says in str(refused.value)


def test_boundaries_are_accepted() -> None:
    assert parse_line("/dialogue scene=x characters=A lines=2") is not None
    assert parse_line("/dialogue scene=x characters=A lines=20") is not None
    assert parse_line("/generate x temperature=0 max_tokens=1024").values["temperature"] == 0.0  # type: ignore[union-attr]
    assert parse_line("/generate x max_tokens=16") is not None


def test_rating_and_vote_keys() -> None:
    assert parse_rating("u") == Key("up")
    assert parse_rating(" D ") == Key("down")
    assert parse_rating("4") == Key("stars", 4)
    assert parse_rating("4 nice one") == Key("stars", 4, "nice one")
    assert parse_rating("r") == Key("regenerate")
    assert parse_rating("") == Key("skip")
    assert parse_rating("s") == Key("skip")
    assert parse_rating("6") is None
    assert parse_rating("0 bad") is None
    assert parse_rating("x") is None
    assert parse_vote("a") == Key("A")
    assert parse_vote("B") == Key("B")
    assert parse_vote("t") == Key("tie")
    assert parse_vote("") == Key("skip")
    assert parse_vote("c") is None


def test_help_lists_every_command_and_option() -> None:
    text = help_text()
    for command in COMMANDS.values():
        assert f"/{command.name}" in text
        for option in command.options:
            assert f"{option.name}=" in text
    assert RATE_KEYS in text


# --- real processes ------------------------------------------------------------------------


def console_env(db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "MUSE_"))}
    cache = os.environ.get("MUSE_CACHE_DIR")
    env |= {"MUSE_DB": str(db), "MUSE_MAX_TOKENS": "8", "MUSE_DEVICE": "cpu"}
    return env | ({"MUSE_CACHE_DIR": cache} if cache else {})


def rows(db: Path, sql: str, *params: object) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_console_through_a_pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stream, footer, 👍, stars with a comment, regenerate, dialogue, refusals, /help, /quit;
    then `muse export` on the console's rows."""
    db = tmp_path / "muse.db"
    lines = [
        "/story prompt='a dragon' length=short",
        "u",
        "4 lovely",
        "r",
        "s",
        '/dialogue scene="a tavern" characters="Innkeeper, Stranger" lines=4',
        "s",
        "/stroy a dragon",
        "/story prompt=x colour=red",
        "/generate x temperature=3",
        "/help",
        "/quit",
    ]
    proc = subprocess.Popen(
        [str(MUSE), "console"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=console_env(db),
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write("\n".join(lines) + "\n")
    proc.stdin.flush()  # stdin stays open: /quit, not the end of input, must end the session
    try:
        assert proc.wait(timeout=TIMEOUT_S) == 0
    finally:
        proc.kill()
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdin.close()
    assert "Traceback" not in err, err

    gens = rows(db, "SELECT * FROM generations ORDER BY id")
    assert [(g["task"], g["parent_id"], g["status"]) for g in gens] == [
        ("story", None, "done"),
        ("story", 1, "done"),  # r: a child of the first take
        ("dialogue", None, "done"),
    ], "refused commands must record nothing"
    story, child, dialogue = gens
    assert (story["user_id"], story["guild_id"]) == (0, 0)
    assert json.loads(story["fields_json"]) == {"prompt": "a dragon", "length": "short"}
    seeds = [json.loads(g["params_json"])["seed"] for g in (story, child)]
    assert seeds[0] != seeds[1]
    assert json.loads(child["messages_json"]) == json.loads(story["messages_json"])
    # the text streamed, then a footer model · tokens · seconds
    assert story["output"] and story["output"] in out
    assert f"{story['model_id']} · {story['tokens_out']} tokens · " in out
    assert out.count(f"{RATE_KEYS} >") == 5  # story, after 👍, after ⭐, the new take; dialogue

    (feedback,) = rows(db, "SELECT * FROM feedback")
    assert (feedback["generation_id"], feedback["user_id"]) == (1, 0)
    assert (feedback["thumbs"], feedback["stars"], feedback["comment"]) == ("up", 4, "lovely")
    assert (feedback["verdict"], feedback["is_self"]) == (1, 1)
    events = rows(db, "SELECT thumbs, stars, comment FROM feedback_events ORDER BY id")
    assert [tuple(e) for e in events] == [("up", None, None), (None, 4, "lovely")]

    spoken = [line for line in dialogue["output"].splitlines() if line.strip()]
    assert spoken and all(line.startswith(tuple(f"{n}: " for n in NAMES)) for line in spoken)
    assert all(line in out for line in spoken)

    assert "unknown command /stroy — try /help (did you mean /story?)" in out
    assert "/story has no option colour; its options are prompt, length." in out
    assert "temperature must be from 0 to 2, not 3." in out
    assert all(f"/{name}" in out for name in COMMANDS)
    assert out.count("First time with Muse?") == 1

    # `muse export` reads console rows like the bot's: the rated story is an SFT/KTO example
    monkeypatch.chdir(tmp_path)
    for fmt in ("sft", "kto"):
        path = tmp_path / f"{fmt}.jsonl"
        assert cli.main(["export", "--format", fmt, "--out", str(path), "--db", str(db)]) == 0
        (row,) = [json.loads(line) for line in path.read_text().splitlines()]
        assert row["metadata"]["generation_id"] == story["id"]
        shown = row["messages"] if fmt == "sft" else row["completion"]
        assert shown[-1] == {"role": "assistant", "content": story["output"]}


def test_console_compare_chat_privacy(tmp_path: Path) -> None:
    """A/B vote, a /chat with history from the store, opt-out, /history, /stats."""
    db = tmp_path / "muse.db"
    lines = [
        "/compare a lighthouse",
        "b",
        "/chat my name is Ada",
        "s",
        "/chat what is my name?",
        "/privacy training=deny",
        "/history count=2",
        "/stats",
        "/privacy",
    ]
    result = subprocess.run(
        [str(MUSE), "console"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=console_env(db),
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr  # the end of input ends the session
    assert "Thanks — saved (B is better)" in result.stdout
    (vote,) = rows(db, "SELECT * FROM comparisons")
    assert (vote["generation_a_id"], vote["generation_b_id"], vote["winner"]) == (1, 2, "B")
    assert (vote["prompt"], vote["user_id"]) == ("a lighthouse", 0)
    chats = rows(db, "SELECT * FROM generations WHERE task = 'chat' ORDER BY id")
    assert len(chats) == 2 and chats[0]["conversation_id"] == chats[1]["conversation_id"]
    second = json.loads(chats[1]["messages_json"])
    assert [m["content"] for m in second[-3:]] == [
        "my name is Ada",
        chats[0]["output"],
        "what is my name?",
    ]
    (user,) = rows(db, "SELECT * FROM users WHERE user_id = 0")
    assert user["opted_out"] == 1
    assert result.stdout.count("\n#") == 2  # /history count=2
    assert "generate " in result.stdout and "chat " in result.stdout  # /stats rows
    assert "Training exports: denied." in result.stdout


class Screen:
    """What a pseudo-terminal showed; `expect` waits for text after the last text expected."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen = bytearray()
        self.pos = 0

    def expect(self, needle: str, timeout: float = TIMEOUT_S) -> None:
        wanted = needle.encode()
        deadline = time.monotonic() + timeout
        while (found := self.seen.find(wanted, self.pos)) < 0:
            left = deadline - time.monotonic()
            assert left > 0, f"no {needle!r} in {bytes(self.seen[self.pos :])!r}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                assert chunk, f"closed before {needle!r}: {bytes(self.seen[self.pos :])!r}"
                self.seen += chunk
        self.pos = found + len(wanted)

    @property
    def text(self) -> str:
        return self.seen.decode(errors="replace").replace("\r\n", "\n")


def test_console_through_a_pseudo_terminal(tmp_path: Path) -> None:
    """Prompts on a terminal; a key rates; /forget deletes after a yes; Ctrl-C at a prompt
    exits cleanly (status 0)."""
    db = tmp_path / "muse.db"
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [str(MUSE), "console"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=tmp_path,
        env=console_env(db),
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # noqa: PLW1509
    )
    os.close(slave)
    screen = Screen(master)
    try:
        screen.expect("muse> ")
        os.write(master, b"/story a dragon\n")
        screen.expect(f"{RATE_KEYS} > ")
        os.write(master, b"d\n")
        screen.expect("saved 👎 for #1")
        screen.expect(f"{RATE_KEYS} > ")
        os.write(master, b"/forget\n")  # a /command at the key prompt runs
        screen.expect("[y/N] ")
        os.write(master, b"y\n")
        screen.expect("Forgotten: 1 generations, 1 feedback, 1 feedback_events, 1 users.")
        screen.expect("muse> ")
        os.write(master, b"\x03")  # Ctrl-C, through the terminal's line discipline
        screen.expect("bye.")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        os.close(master)
    assert "Traceback" not in screen.text, screen.text
    for table in ("generations", "feedback", "feedback_events", "users"):
        assert rows(db, f"SELECT COUNT(*) FROM {table}")[0][0] == 0, table


def test_run_without_a_token_serves_the_console(tmp_path: Path) -> None:
    """`muse run` with no DISCORD_TOKEN (and no .env): the instructions, then console mode."""
    result = subprocess.run(
        [str(MUSE), "run"],
        input="/help\n/loop status\n/loop tune\n/forget\nn\n/quit\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=console_env(tmp_path / "muse.db"),
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    assert "DISCORD_TOKEN is not set" in result.stderr
    assert "https://discord.com/developers/applications" in result.stderr
    assert "Starting console mode instead" in result.stderr
    assert "Muse console" in result.stdout
    assert all(f"/{name}" in result.stdout for name in COMMANDS)
    assert "**Learning loop**: off" in result.stdout and "0 of 50 needed" in result.stdout
    assert "The console has /loop status only" in result.stdout
    assert "Nothing was deleted." in result.stdout


def test_console_continues_a_cut_text_and_saves_an_edit(tmp_path: Path) -> None:
    """`c` writes a cut text on (▶), `e` stores a typed correction as an edit (✏️)."""
    db = tmp_path / "muse.db"
    lines = ["/generate Tell me about foxes.", "c", "e", "Foxes are clever", "and quick.", ".", "s"]
    result = subprocess.run(
        [str(MUSE), "console"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=console_env(db),
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "✂️ Cut at the length limit" in out and "▶ #1 goes on:" in out
    assert "✏️ Saved your improvement of #2 as #3." in out
    first, more, edit = rows(db, "SELECT * FROM generations ORDER BY id")
    assert more["parent_id"] == 1 and more["output"].startswith(first["output"])
    assert (edit["source"], edit["parent_id"], edit["user_id"]) == ("edit", 2, 0)
    assert edit["output"] == "Foxes are clever\nand quick."


def test_console_arena_needs_two_models_then_battles_blind(tmp_path: Path, loaded_model) -> None:
    """/arena with the base alone says how to make a second model; with an adapter registered
    it battles blind and the vote reveals which model wrote A and B."""
    import asyncio
    import copy

    from peft import LoraConfig, get_peft_model

    from storage.rows import ModelRecord
    from storage.store import Store

    db = tmp_path / "muse.db"

    def console(*lines: str) -> str:
        done = subprocess.run(
            [str(MUSE), "console"],
            input="\n".join(lines) + "\n",
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=console_env(db),
            timeout=TIMEOUT_S,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    alone = console("/arena a fox")
    assert "The arena needs two models" in alone and "muse tune --name" in alone

    folder = tmp_path / "adapters" / "house-style"
    config = LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(copy.deepcopy(loaded_model.model), config).save_pretrained(folder)

    async def register() -> None:
        async with Store.open(db) as store:
            await store.register_model(ModelRecord("house-style", "base", str(folder), "sft"))

    asyncio.run(register())
    out = console("/arena a fox", "a")
    assert "house-style" not in out.split("Thanks — saved")[0]  # blind until the vote
    assert "Thanks — saved (A is better)" in out and "A was written by **" in out
    assert "house-style" in out.split("Thanks — saved")[1]
    (vote,) = rows(db, "SELECT * FROM comparisons")
    models = {r["model_id"] for r in rows(db, "SELECT model_id FROM generations")}
    assert vote["winner"] == "A" and len(models) == 2 and "house-style" in models
