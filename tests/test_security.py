"""Security: who may do what (Manage Server, Manage Messages, the requester), votes one per
user, the Discord token kept out of logs, errors, the database and exports, SQL only through
parameters, a private database file, and pseudonymous exports without opted-out users."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import os
import re
import sqlite3
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.core.settings import Secret, Settings
from generation.types import GenerationRequest
from storage.export import FORMATS
from storage.store import Store
from tests.bot.community import answered, ephemeral, finished, muse, refusal, rows
from tests.bot.fakes import ReplayEngine
from tests.discord_emulator import MANAGE_GUILD, DiscordEmulator

ROOT = Path(__file__).resolve().parents[1]
CANARY = "canary.MTIzNDU2Nzg5.abcdefghijklmnop"


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator() as emulator:
        yield emulator


# --- who may do what --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("export", {"format": "raw"}),
        ("export", {"format": "sft", "min_score": -5}),
        ("settings", {}),
        ("settings", {"blocklist": "dragon", "per_user_per_minute": 0}),
    ],
)
async def test_manage_server_commands_refuse_members_without_it(
    emu: DiscordEmulator, tmp_path: Path, command: str, options: dict
):
    """`default_member_permissions` only hides the command in Discord's client; the emulator
    sends it anyway, as a modified client could, and the bot itself refuses."""
    db = tmp_path / "muse.db"
    async with muse(emu, db, ReplayEngine()):
        synced = next(c for c in emu.commands() if c["name"] == command)
        assert int(synced["default_member_permissions"]) == MANAGE_GUILD
        await finished(await emu.slash_command("story", {"prompt": "a secret fox"}))
        refused = []
        for user in ("alice", "bob", "moderator"):
            refused.append(record := await emu.slash_command(command, options, user=user))
            assert "Manage Server" in await refusal(record)
        assert rows(db, "SELECT COUNT(*) FROM guild_settings") == [(0,)]  # nothing changed
        allowed = await emu.slash_command(command, options, user="manager")
        shown = (await answered(allowed)) if command == "export" else await ephemeral(allowed)
        assert "Manage Server" not in shown.content
    assert all(not m.attachments and "fox" not in m.content for i in refused for m in i.messages)
    if command == "export":  # the manager got the file (raw has every generation)
        assert shown.attachments and ("secret fox" in shown.attachments[0].text()) == (
            options["format"] == "raw"
        )
    elif options:  # the manager's change, and only it, was saved
        assert "dragon" in rows(db, "SELECT settings_json FROM guild_settings")[0][0]


async def test_stop_and_delete_are_for_the_requester_or_moderators(
    emu: DiscordEmulator, tmp_path: Path
):
    db = tmp_path / "muse.db"
    engine = ReplayEngine(["slow " * 400], delay_s=0.01)
    async with muse(emu, db, engine) as bot:
        bot.app.edit_interval_s = 0.05
        story = await emu.slash_command("story", {"prompt": "a fox"})
        await story.wait_until(lambda i: i.original and "muse:stop:1" in i.original.custom_ids())
        denied = await ephemeral(await emu.press_button(story.original, "muse:stop:1", user="bob"))
        assert "Only the person who asked" in denied.content and engine.aborted == set()
        manager = await ephemeral(
            await emu.press_button(story.original, "muse:stop:1", user="manager")
        )
        assert "Only the person who asked" in manager.content  # Manage Server is not enough
        stopped = await ephemeral(
            await emu.press_button(story.original, "muse:stop:1", user="moderator")
        )
        assert stopped.content == "⏹ Stopping."
        await finished(story)
        assert rows(db, "SELECT status FROM generations") == [("cancelled",)]

        engine.texts, engine.delay_s = ["A fox ran."], 0.001
        second = await finished(await emu.slash_command("story", {"prompt": "b"}), "muse:rate:2")
        third = await finished(await emu.slash_command("story", {"prompt": "c"}), "muse:rate:3")
        no = await ephemeral(await emu.press_button(second.original, "muse:delete:2", user="bob"))
        assert "Only the person who asked" in no.content and not second.original.deleted
        await ephemeral(await emu.press_button(second.original, "muse:delete:2", user="moderator"))
        await ephemeral(await emu.press_button(third.original, "muse:delete:3", user="alice"))
        assert second.original.deleted and third.original.deleted
    assert rows(db, "SELECT id, status FROM generations ORDER BY id") == [
        (1, "cancelled"),
        (2, "deleted"),
        (3, "deleted"),
    ]


async def test_one_users_forget_confirmation_is_inert_for_everyone_else(
    emu: DiscordEmulator, tmp_path: Path
):
    db = tmp_path / "muse.db"
    async with muse(emu, db, ReplayEngine()):
        await finished(await emu.slash_command("story", {"prompt": "alice's"}))
        await finished(await emu.slash_command("story", {"prompt": "bob's"}, user="bob"), "rate:2")
        ask = await ephemeral(await emu.slash_command("forget", user="alice"))
        for user in ("bob", "moderator", "manager", "owner"):
            other = await ephemeral(await emu.press_button(ask, ask.custom_ids()[0], user=user))
            assert "Only the person who asked" in other.content
    alice, bob = emu.user("alice").id, emu.user("bob").id
    assert rows(db, "SELECT user_id FROM generations ORDER BY id") == [(alice,), (bob,)]
    assert {r[0] for r in rows(db, "SELECT user_id FROM users")} == {alice, bob}


async def test_votes_are_one_per_user_and_the_latest_decides(emu: DiscordEmulator, tmp_path):
    db = tmp_path / "muse.db"
    async with muse(emu, db, ReplayEngine()):
        story = await finished(await emu.slash_command("story", {"prompt": "a fox"}))
        for vote in ("up", "up", "down"):
            await ephemeral(
                await emu.press_button(story.original, f"muse:rate:1:{vote}", user="bob")
            )
    assert rows(db, "SELECT user_id, thumbs, verdict FROM feedback") == [
        (emu.user("bob").id, "down", -1)
    ]
    assert rows(db, "SELECT thumbs FROM feedback_events ORDER BY id") == [
        ("up",),
        ("up",),
        ("down",),
    ]


# --- the token --------------------------------------------------------------------------


class Everything(logging.Handler):
    """Every log record at every level, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def capture_all_logging() -> Iterator[Everything]:
    handler, root = Everything(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.setLevel(level)
        root.removeHandler(handler)


class FailingEngine(ReplayEngine):
    """Replays, except a prompt containing "explode" fails inside the "worker"."""

    async def _replay(self, request: GenerationRequest, text: str):  # type: ignore[override]
        if "explode" in request.messages[-1].content:
            raise RuntimeError(f"worker failed on {request.request_id}")
        async for chunk in super()._replay(request, text):
            yield chunk


def database_text(db: Path) -> str:
    """Every value of every row of every table, as text."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert "generations" in tables and "feedback" in tables
        return "\n".join(
            repr(row) for table in tables for row in conn.execute(f'SELECT * FROM "{table}"')
        )


async def test_the_token_appears_in_no_log_message_database_or_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DISCORD_TOKEN", CANARY)
    settings = Settings.load(env_file=None)
    assert settings.discord_token.reveal() == CANARY
    assert CANARY not in repr(settings) and CANARY not in str(settings)
    assert CANARY not in f"{settings.discord_token}" and CANARY not in repr(Secret(CANARY))
    db = tmp_path / "muse.db"
    engine = FailingEngine(["Hello @everyone, a story."])
    with capture_all_logging() as logs:
        async with DiscordEmulator(token=CANARY) as emu:
            async with muse(emu, db, engine, discord_token=settings.discord_token):
                story = await finished(await emu.slash_command("story", {"prompt": "a fox"}))
                await ephemeral(
                    await emu.press_button(story.original, "muse:rate:1:up", user="bob")
                )
                broken = await answered(await emu.slash_command("generate", {"prompt": "explode"}))
                assert "Something went wrong" in broken.content  # the error, shown
            async with muse(emu, db, engine, discord_token=settings.discord_token):  # a restart
                await finished(await emu.slash_command("poem", {"topic": "rain"}), "rate:3")
                export = await answered(
                    await emu.slash_command("export", {"format": "raw"}, user="manager")
                )
            seen = [
                text
                for m in emu.messages
                for text in [m.content, json.dumps(m.embeds)] + [a.text() for a in m.attachments]
            ]
    assert export.attachments and any("Something went wrong" in t for t in seen)
    assert any("error" in line.lower() and "Traceback" in line for line in logs.lines)
    assert len(logs.lines) > 50 and any(line.startswith("discord.") for line in logs.lines)
    assert not [line for line in logs.lines if CANARY in line]
    assert not [text for text in seen if CANARY in text]
    assert CANARY not in database_text(db)
    async with Store.open(db) as store:
        for fmt in FORMATS:
            out = io.StringIO()
            await store.export(fmt, out)
            assert CANARY not in out.getvalue()
    assert_not_in_files(tmp_path, CANARY.encode())


def assert_not_in_files(folder: Path, secret: bytes) -> None:
    """The files themselves (-wal included), not only what SQL shows."""
    for path in folder.iterdir():
        assert secret not in path.read_bytes(), path


# --- SQL only through parameters -----------------------------------------------------------

EXECUTES = {"execute", "executemany", "execute_fetchall", "executescript"}


class SqlAudit:
    """Judges every SQL argument of an execute call in one module's source.

    SQL text may be built only from SQL constants: string literals, module-level names bound
    to such text, UPPER_CASE constants of another module (`sql.RAW_ROWS`), a loop variable over
    a literal list of identifiers or a constant list of statements, an integer formatted with
    `:d`, or a parameter of a function whose every call in the module passes such SQL. Values
    (ids, names, user text) must travel as parameters."""

    def __init__(self, source: str) -> None:
        self.tree = ast.parse(source)
        self.parents = {
            child: node for node in ast.walk(self.tree) for child in ast.iter_child_nodes(node)
        }
        self.module_names = {
            target.id: node.value
            for node in self.tree.body
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }

    def problems(self) -> list[str]:
        found = []
        for node in ast.walk(self.tree):
            is_execute = isinstance(node, ast.Call) and node.args and _called(node) in EXECUTES
            if is_execute and not self.safe(node.args[0], set()):
                found.append(f"line {node.lineno}: {ast.unparse(node.args[0])}")
        return found

    def safe(self, node: ast.AST, seen: set[int]) -> bool:
        if id(node) in seen:
            return True
        seen = seen | {id(node)}
        match node:
            case ast.Constant(value=str() | int()):
                return True
            case ast.JoinedStr(values=values):
                return all(self._safe_part(v, seen) for v in values)
            case ast.BinOp(op=ast.Add() | ast.Mod(), left=left, right=right):
                return self.safe(left, seen) and self.safe(right, seen)
            case ast.Attribute(value=ast.Name(), attr=attr):
                return attr.isupper()  # another module's SQL constant
            case ast.Call(func=ast.Attribute(attr="format", value=text)):
                values = [*node.args, *(k.value for k in node.keywords)]
                return self.safe(text, seen) and all(self.safe(v, seen) for v in values)
            case ast.Call():  # a helper returning SQL, e.g. sql.scored(where, condition, order)
                values = [*node.args, *(k.value for k in node.keywords)]
                return _is_sql_helper(node) and all(self.safe(v, seen) for v in values)
            case ast.Name(id=name):
                return self._safe_name(node, name, seen)
        return False

    def _safe_part(self, part: ast.AST, seen: set[int]) -> bool:
        if isinstance(part, ast.Constant):
            return True
        assert isinstance(part, ast.FormattedValue)
        spec = part.format_spec
        if spec is not None and [getattr(v, "value", None) for v in spec.values] == ["d"]:
            return True  # formatted as an integer: it cannot carry SQL
        return self.safe(part.value, seen)

    def _safe_name(self, node: ast.Name, name: str, seen: set[int]) -> bool:
        function = self._enclosing_function(node)
        if function is not None:
            loops = [
                n for n in ast.walk(function) if isinstance(n, ast.For) and _bound(n.target, name)
            ]
            if loops:
                return all(self._safe_loop(loop.iter) for loop in loops)
            values = [
                n.value
                for n in ast.walk(function)
                if isinstance(n, ast.Assign) and any(_bound(t, name) for t in n.targets)
            ]
            if values:
                return all(self.safe(v, seen) for v in values)
            if name in [a.arg for a in function.args.args + function.args.kwonlyargs]:
                return self._safe_parameter(function, name, seen)
        if name in self.module_names:
            return self.safe(self.module_names[name], seen) or self._safe_loop(
                self.module_names[name]
            )
        return False

    def _safe_loop(self, iterable: ast.AST) -> bool:
        """A literal list of identifiers, or a module constant list of SQL statements."""
        if isinstance(iterable, ast.Name) and iterable.id in self.module_names:
            iterable = self.module_names[iterable.id]
        if isinstance(iterable, ast.Tuple | ast.List):
            return all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in iterable.elts
            )
        return False

    def _safe_parameter(self, function: ast.AST, name: str, seen: set[int]) -> bool:
        """Every call of `function` in this module passes SQL for `name`."""
        params = [a.arg for a in function.args.args]  # type: ignore[attr-defined]
        if params and params[0] == "self":
            params = params[1:]
        calls = [
            n
            for n in ast.walk(self.tree)
            if isinstance(n, ast.Call) and _called(n) == function.name  # type: ignore[attr-defined]
        ]
        defaults = dict(
            zip(
                reversed(params),
                reversed(function.args.defaults),  # type: ignore[attr-defined]
                strict=False,
            )
        )
        if not calls:
            return False
        for call in calls:
            given = dict(zip(params, call.args, strict=False))
            given |= {k.arg: k.value for k in call.keywords if k.arg}
            value = given.get(name, defaults.get(name))
            if value is None or not self.safe(value, seen):
                return False
        return True

    def _enclosing_function(self, node: ast.AST) -> ast.FunctionDef | None:
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                return node  # type: ignore[return-value]
        return None


def _called(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _bound(target: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(target))


def _is_sql_helper(call: ast.Call) -> bool:
    """Functions of `storage.export_sql` that put SQL constants together."""
    func = call.func
    return isinstance(func, ast.Attribute) and ast.unparse(func) == "sql.scored"


def sql_built_from_values(source: str) -> list[str]:
    return SqlAudit(source).problems()


#: Driver adapters: they run the SQL text their callers pass (translated to the engine's
#: dialect), so what they execute is only ever text that the audited modules built.
PASS_THROUGH = {"pg_conn.py"}


def test_storage_builds_sql_only_from_constants_never_from_values():
    files = sorted(f for f in (ROOT / "storage").glob("*.py") if f.name not in PASS_THROUGH)
    assert len(files) > 5
    problems = {
        f.name: found for f in files if (found := sql_built_from_values(f.read_text("utf-8")))
    }
    assert problems == {}
    statement = re.compile(r"^\s*(SELECT \S|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE|PRAGMA)")
    for file in (ROOT / "bot").rglob("*.py"):  # the bot holds no SQL of its own
        strings = [
            n.value
            for n in ast.walk(ast.parse(file.read_text("utf-8")))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]
        assert not [s for s in strings if statement.match(s)], file


def test_the_sql_check_catches_values_put_into_sql():
    """The check above can fail: each of these builds SQL from a value."""
    for bad in [
        "def f(conn, name):\n    conn.execute(f\"SELECT * FROM users WHERE name = '{name}'\")",
        'def f(conn, uid):\n    conn.execute("DELETE FROM users WHERE id = %s" % uid)',
        'def f(conn, uid):\n    conn.execute("DELETE FROM users WHERE id = {}".format(uid))',
        'def f(conn, uid):\n    conn.execute("DELETE FROM users WHERE id = " + str(uid))',
        'def f(conn, t):\n    for table in t:\n        conn.execute(f"DELETE FROM {table}")',
        'def f(conn, n):\n    conn.execute(f"PRAGMA user_version = {n}")',
    ]:
        assert sql_built_from_values(bad), bad
    good = (
        'T = "SELECT 1"\ndef f(conn, n):\n    conn.execute(f"PRAGMA user_version = {n:d}")\n'
        '    for table in ("a", "b"):\n        conn.execute(f"DELETE FROM {table}", (1,))\n'
        "    conn.execute(T, {'x': n})"
    )
    assert sql_built_from_values(good) == []


# --- the database file ----------------------------------------------------------------------


async def test_the_database_and_its_wal_files_are_private(tmp_path: Path):
    old = os.umask(0)  # the mode must not depend on a careful umask
    try:
        db = tmp_path / "data" / "muse.db"
        async with Store.open(db) as store:
            generation = await store.record_generation(
                user_id=1, task="story", messages=[], params={}, model_id="m"
            )
            await store.finish_generation(generation, "text", "stop", 1, 1, 1.0, 1.0)
            files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
            assert all(f.exists() for f in files)
            modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}
    finally:
        os.umask(old)
    assert modes == {"muse.db": 0o600, "muse.db-wal": 0o600, "muse.db-shm": 0o600}


# --- exports ---------------------------------------------------------------------------------


async def test_exports_pseudonymise_users_and_leave_out_opted_out_ones(tmp_path: Path):
    """Every format, rich enough that each has rows: no raw user id anywhere, the opted-out
    user's prompt, text and ratings nowhere."""
    alice, bob, carol, dave = 1234567890123456789, 2345678901234567890, 3456789012345678901, 4567
    async with Store.open(tmp_path / "muse.db") as store:

        async def take(user: int, prompt: str, output: str, parent: int | None = None) -> int:
            messages = [{"role": "user", "content": prompt}]
            generation = await store.record_generation(
                user_id=user,
                task="story",
                messages=messages,
                params={"seed": 1},
                model_id="m",
                fields={"prompt": prompt},
                guild_id=99,
                channel_id=98,
                parent_id=parent,
            )
            await store.finish_generation(generation, output, "stop", 3, 3, 1.0, 2.0)
            return generation

        first = await take(alice, "alice's prompt", "alice's text")
        again = await take(bob, "alice's prompt", "bob's take", parent=first)
        await store.record_feedback(first, bob, thumbs="up")
        await store.record_feedback(first, dave, stars=5, comment="lovely")
        await store.record_feedback(again, alice, thumbs="down")
        await store.record_comparison("alice's prompt", first, again, dave, "A")
        secret = await take(carol, "carol's secret prompt", "carol's secret text")
        await store.record_feedback(secret, bob, thumbs="up")
        await store.record_feedback(first, carol, thumbs="down", comment="carol's secret rating")
        await store.set_opted_out(carol, True)
        exported = {}
        for fmt in FORMATS:
            out = io.StringIO()
            assert await store.export(fmt, out) > 0, fmt
            exported[fmt] = out.getvalue()
    for fmt, text in exported.items():
        for user in (alice, bob, carol, dave):
            assert str(user) not in text, (fmt, user)
        assert "carol" not in text, fmt
    raw = [json.loads(line) for line in exported["raw"].splitlines()]
    pseudonyms = {row["user"] for row in raw} | {f["user"] for row in raw for f in row["feedback"]}
    assert len(pseudonyms) == 3 and all(len(p) == 16 for p in pseudonyms)  # alice, bob, dave
    assert {row["id"] for row in raw} == {first, again}
    assert json.loads(exported["sft"].splitlines()[0])["metadata"]["user"] in pseudonyms


async def test_an_export_through_discord_has_no_user_ids(emu: DiscordEmulator, tmp_path: Path):
    async with muse(emu, tmp_path / "muse.db", ReplayEngine(["A fox ran far."])):
        story = await finished(await emu.slash_command("story", {"prompt": "a fox"}))
        await ephemeral(await emu.press_button(story.original, "muse:rate:1:up", user="bob"))
        await finished(await emu.press_button(story.original, "muse:regen:1", user="bob"), "rate:2")
        await ephemeral(await emu.slash_command("privacy", {"training": "deny"}, user="moderator"))
        texts = []
        for fmt in FORMATS:
            message = await answered(
                await emu.slash_command("export", {"format": fmt}, user="manager")
            )
            texts += [a.text() for a in message.attachments]
    assert len(texts) == 4 and texts[0].strip()
    for user in emu.state.users.values():
        assert all(str(user.id) not in text for text in texts), user.name
