"""A database that is read-only when Muse starts: one clear line and exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.storage.readonly import assert_unwritable, immutable, make_database

MUSE = Path(sys.executable).with_name("muse")


@pytest.mark.parametrize("command", [["run"], ["console"]])
def test_a_read_only_database_at_start_is_one_clear_error(tmp_path: Path, command) -> None:
    db = tmp_path / "muse.db"
    make_database(db)
    before = db.read_bytes()
    env = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"}
    env |= {
        "MUSE_DB": str(db),
        "MUSE_BACKEND": "openai",
        "MUSE_OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
    }
    with immutable(db):
        assert_unwritable(db)
        done = subprocess.run(
            [str(MUSE), *command], env=env, input="", capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 2, done.stderr
    assert f"the database {db} is read-only" in done.stderr
    assert "MUSE_DB" in done.stderr and "Traceback" not in done.stderr
    assert db.read_bytes() == before


def test_a_bad_presets_file_at_start_is_one_clear_error(tmp_path: Path) -> None:
    presets = tmp_path / "mine.toml"
    presets.write_text("[riddle]\nkind = 'song'\ntemplate = '{a}'\nmain_field = 'a'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "MUSE_"))}
    env |= {"DISCORD_TOKEN": "x", "MUSE_DB": str(tmp_path / "muse.db")}
    env["MUSE_PRESETS"] = str(presets)
    done = subprocess.run(
        [str(MUSE), "run"], env=env, input="", capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert f"{presets}: [riddle] kind must be one of text, dialogue" in done.stderr
    assert "Traceback" not in done.stderr
