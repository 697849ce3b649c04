"""`muse db copy`, `muse backup` and `muse doctor` with a PostgreSQL database (MUSE_DB URL)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from bot.cli import main as cli
from bot.cli.doctor import check_database
from storage.migrations import MIGRATIONS
from storage.store import Store
from tests.postgres_server import PASSWORD, USER, PostgresServer


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("MUSE_", "DISCORD_", "PG")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


async def _fill(target: Path | str) -> None:
    async with Store.open(target) as store:
        for n in range(3):
            generation_id = await store.record_generation(
                user_id=n, task="story", messages=[{"role": "user", "content": f"p{n}"}],
                params={}, model_id="m", guild_id=42,
            )  # fmt: skip
            await store.finish_generation(generation_id, f"out {n}", "stop", 1, 2, 1.0, 2.0)
            await store.record_feedback(generation_id, 9, thumbs="up")


async def test_db_copy_moves_a_file_to_postgres_and_back_without_showing_the_password(
    env,
    tmp_path: Path,
    capsys,
    postgres_server: PostgresServer,
) -> None:
    await _fill(tmp_path / "muse.db")
    url = postgres_server.create_database()
    assert cli.main(["db", "copy", str(tmp_path / "muse.db"), url]) == 0
    said = capsys.readouterr().err
    assert "generations 3, feedback 3, feedback_events 3, comparisons 0" in said
    assert "(counts checked)" in said
    assert f"{USER}:***@" in said and PASSWORD not in said
    assert cli.main(["db", "copy", str(tmp_path / "muse.db"), url]) == 1
    refused = capsys.readouterr().err
    assert "already holds rows" in refused and "--force" in refused
    assert PASSWORD not in refused
    assert cli.main(["db", "copy", str(tmp_path / "muse.db"), url, "--force"]) == 0
    assert cli.main(["db", "copy", url, str(tmp_path / "back.db")]) == 0
    with sqlite3.connect(tmp_path / "back.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 3


async def test_backup_and_doctor_on_a_postgres_url(
    env,
    tmp_path: Path,
    capsys,
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database()
    created = check_database(url)
    assert created.ok and "no schema yet" in created.detail
    await _fill(url)
    env.setenv("MUSE_DB", url)
    assert cli.main(["backup", str(tmp_path / "copy.db")]) == 0
    said = capsys.readouterr().err
    assert "backed up postgresql://muse:***@" in said and PASSWORD not in said
    with sqlite3.connect(tmp_path / "copy.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM generations").fetchone()[0] == 3
    healthy = check_database(url)
    assert healthy.ok, healthy
    assert "PostgreSQL 15" in healthy.detail or "PostgreSQL 1" in healthy.detail
    assert f"schema {len(MIGRATIONS)} of {len(MIGRATIONS)}" in healthy.detail
    assert PASSWORD not in healthy.detail and f"{USER}:***@" in healthy.detail
    wrong = check_database(url.replace(PASSWORD, "Wr0ng-pa55"))
    assert not wrong.ok and "password authentication failed" in wrong.detail
    assert "Wr0ng-pa55" not in wrong.detail + wrong.hint
    unreachable = check_database(f"postgresql://{USER}@127.0.0.1:1/x")
    assert not unreachable.ok and "~/.pgpass" in unreachable.hint
