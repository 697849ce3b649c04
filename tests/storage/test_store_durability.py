"""Every acknowledged write is in the file, at once and after SIGKILL — whatever else opens it.

A property of the store rather than one case: hypothesis draws sequences of every kind of write
the store offers (generations and their finish, message ids, deletion, edits, feedback and its
changes, comparisons and arena votes, conversations, settings, opt-outs, notices, personas, the
models registry, the retention purge, `/forget`), mixed with the reads the bot does and with a
second open of the file inside the writing process, which must be refused. The store lives in a
child process (`store_child`); this process plays every other process on the host: between the
writes it opens and closes the file as `muse export`, `muse backup`, `muse doctor` and a plain
`sqlite3` reader do. After each acknowledgement, what this process reads from the file equals
what the writing process's own store reads; the writer never holds a deleted `-wal`; after
SIGKILL the file still holds everything acknowledged.

The cause this guards against: closing any descriptor of the database file drops every POSIX
lock the process holds on it, SQLite's included; the next process to close its connection then
believes it is the last, checkpoints, and deletes the `-wal` the writer still appends to.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.export import ExportFilters, export_jsonl
from storage.maintenance import backup_file, check_file, deleted_wal_holders
from tests.storage.store_child import plain
from tests.wal_holder import holding_a_deleted_wal

REPO = Path(__file__).resolve().parents[2]
USERS = (1, 2, 3, 4)
GUILDS = (100, 200)
CHANNELS = (10, 11)
MODELS = ("base", "house-style")
TEXTS = st.text(alphabet="abcdefgh ✏️", min_size=1, max_size=12)


class Writer:
    """The child process that owns the store."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.storage.store_child", str(path)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.read() == {"ok": "ready"}

    def read(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        assert line, "the store's process died"
        return json.loads(line)

    def call(self, op: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run `store.<op>(*args, **kwargs)` there; returns its acknowledgement."""
        request = json.dumps({"op": op, "args": args, "kwargs": kwargs})
        self.process.stdin.write(request + "\n")
        self.process.stdin.flush()
        return self.read()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def file_snapshot(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every row (heartbeats aside: they change by themselves), read by this process through a
    read-write connection that it then closes, as the `sqlite3` shell does: the most a neighbour
    can do to the writer's `-wal`."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                " AND name != 'instances'"
            )
        ]
        rows = {t: [dict(r) for r in conn.execute(f"SELECT * FROM {t}")] for t in sorted(tables)}
    return json.loads(json.dumps(plain(rows)))


def neighbour(kind: str, path: Path, folder: Path) -> None:
    """Another process on the host opens and closes the database."""
    if kind == "sqlite3 reader":
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("SELECT COUNT(*) FROM generations").fetchone()
    elif kind == "muse export":
        export_jsonl(path, "raw", io.StringIO(), ExportFilters())
    elif kind == "muse backup":
        backup_file(path, folder / "backup.db", overwrite=True)
    elif kind == "muse doctor":
        assert check_file(path).integrity == "ok"


# --- what hypothesis draws ---------------------------------------------------------------------

OPS = (
    "record_generation",
    "record_generation",
    "finish_generation",
    "set_message_id",
    "set_followup_message_ids",
    "mark_deleted",
    "record_edit",
    "record_feedback",
    "record_feedback",
    "record_comparison",
    "create_conversation",
    "update_guild_settings",
    "set_opted_out",
    "mark_notice_shown",
    "set_persona",
    "clear_persona",
    "register_model",
    "retire_model",
    "travel",
    "purge_older_than",
    "forget_user",
    "open_again",
    "get_generation",
    "recent_generations",
    "stats",
    "arena_votes",
    "export",
    "backup",
)
NEIGHBOURS = ("none", "sqlite3 reader", "muse export", "muse backup", "muse doctor")


def draw_call(data: st.DataObject, op: str, ids: list[int], folder: Path) -> tuple[tuple, dict]:
    """Arguments for `op`; generation ids are drawn from those acknowledged so far."""
    user = data.draw(st.sampled_from(USERS))
    guild, channel = data.draw(st.sampled_from(GUILDS)), data.draw(st.sampled_from(CHANNELS))
    some_id = data.draw(st.sampled_from(ids)) if ids else 1
    if op == "record_generation":
        model = data.draw(st.sampled_from(MODELS))
        messages = [{"role": "user", "content": data.draw(TEXTS)}]
        kwargs = dict(user_id=user, task="story", messages=messages, params={"seed": 1})
        return (), kwargs | dict(model_id=model, guild_id=guild, channel_id=channel)
    if op == "finish_generation":
        return (some_id, data.draw(TEXTS), "stop", 3, 5, 10.0, 20.0), {}
    if op == "set_message_id":
        return (some_id, data.draw(st.integers(1, 10**12))), {}
    if op == "set_followup_message_ids":
        return (some_id, data.draw(st.lists(st.integers(1, 10**12), max_size=3))), {}
    if op == "mark_deleted":
        return (some_id,), {}
    if op == "record_edit":
        return (some_id, user, data.draw(TEXTS)), dict(guild_id=guild, channel_id=channel)
    if op == "record_feedback":
        how = data.draw(st.sampled_from(("thumbs", "stars", "comment")))
        value = {
            "thumbs": lambda: data.draw(st.sampled_from(("up", "down"))),
            "stars": lambda: data.draw(st.integers(1, 5)),
            "comment": lambda: data.draw(TEXTS),
        }[how]()
        return (some_id, user), {how: value}
    if op == "record_comparison":
        other = data.draw(st.sampled_from(ids)) if ids else 2
        winner = data.draw(st.sampled_from(("A", "B", "tie")))
        return ("prompt", some_id, other, user, winner), {}
    if op == "create_conversation":
        return (data.draw(st.integers(1, 3)),), dict(user_id=user, guild_id=guild)
    if op == "update_guild_settings":
        temperature = data.draw(st.one_of(st.none(), st.floats(0, 2, allow_nan=False)))
        return (guild,), dict(temperature=temperature)
    if op == "set_opted_out":
        return (user, data.draw(st.booleans())), {}
    if op == "mark_notice_shown":
        return (user,), {}
    if op == "set_persona":
        return (guild, channel, data.draw(TEXTS), data.draw(TEXTS)), {}
    if op == "clear_persona":
        return (channel,), {}
    if op == "register_model":
        name = data.draw(st.sampled_from(MODELS[1:] + ("other",)))
        record = dict(name=name, base_model="smol", adapter_path=f"/a/{name}", method="sft")
        return (record,), dict(replace=True)
    if op == "retire_model":
        return (data.draw(st.sampled_from(("house-style", "other"))),), {}
    if op == "travel":
        return (data.draw(st.integers(1, 20)),), {}
    if op == "purge_older_than":
        return (data.draw(st.integers(1, 30)),), {}
    if op in ("forget_user", "recent_generations"):
        return (user,), {}
    if op == "get_generation":
        return (some_id,), {}
    if op in ("stats", "arena_votes"):
        return (), {}
    if op == "export":
        return (data.draw(st.sampled_from(("sft", "dpo", "kto", "raw"))),), {}
    if op == "backup":
        return (str(folder / "own-backup.db"),), {}
    return (), {}  # open_again


def check_effect(op: str, args: tuple, answer: dict[str, Any], seen: dict[str, Any]) -> None:
    """What the acknowledged write says it did is in the file (deletes: gone at once)."""
    if "error" in answer:
        return
    if op == "forget_user":
        for table in ("generations", "feedback", "comparisons", "conversations", "users"):
            assert all(row["user_id"] != args[0] for row in seen[table]), table
    elif op == "mark_deleted":
        assert {"id": args[0], "status": "deleted"}.items() <= find(seen, args[0]).items()
    elif op == "finish_generation":
        assert find(seen, args[0])["output"] == args[1]
    elif op in ("record_generation", "record_edit"):
        assert find(seen, answer["ok"])


def find(seen: dict[str, Any], generation_id: int) -> dict[str, Any]:
    (row,) = [row for row in seen["generations"] if row["id"] == generation_id]
    return row


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_every_acknowledged_write_is_in_the_file_at_once_and_after_sigkill(data) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        path = folder / "muse.db"
        writer = Writer(path)
        ids: list[int] = []
        second_opens: list[dict[str, Any]] = []
        try:
            for _ in range(data.draw(st.integers(5, 30), label="steps")):
                op = data.draw(st.sampled_from(OPS), label="op")
                args, kwargs = draw_call(data, op, ids, folder)
                answer = writer.call(op, *args, **kwargs)
                if op in ("record_generation", "record_edit") and "ok" in answer:
                    ids.append(answer["ok"])
                if op == "open_again":
                    second_opens.append(answer)
                neighbour(data.draw(st.sampled_from(NEIGHBOURS), label="neighbour"), path, folder)
                seen = file_snapshot(path)
                assert seen == writer.call("snapshot")["ok"], f"after {op}{args}: {answer}"
                check_effect(op, args, answer, seen)
                assert deleted_wal_holders(path) == ()
            before_kill = writer.call("snapshot")["ok"]
        finally:
            writer.kill()
        assert file_snapshot(path) == before_kill
        for answer in second_opens:  # refused, and the refusal lost nothing (checked above)
            assert answer["error"].startswith("DatabaseAlreadyOpen"), answer


def test_a_writer_holding_a_deleted_wal_is_found(tmp_path: Path) -> None:
    """`deleted_wal_holders` (what `muse doctor` reports) sees the state the bug left."""
    path = tmp_path / "muse.db"
    assert deleted_wal_holders(path) == ()
    with holding_a_deleted_wal(path) as pid:
        (found,) = deleted_wal_holders(path)
        assert found[0] == pid
        problems = check_file(path).problems
        assert any(f"process {pid} writes to a deleted muse.db-wal" in p for p in problems)
