"""Settings read from the environment: paths, and the test double's face."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.core.settings import Settings
from generation.backend import Backend
from tests.bot.fakes import ReplayEngine


def test_a_leading_tilde_in_a_path_setting_means_the_home_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MUSE_CACHE_DIR", "~/.cache/muse")
    monkeypatch.setenv("MUSE_DB", "~/muse.db")
    settings = Settings.load(env_file=None)
    assert settings.cache_dir == tmp_path / ".cache" / "muse"
    assert settings.db_path == tmp_path / "muse.db"


def test_the_replaying_double_is_a_backend() -> None:
    assert isinstance(ReplayEngine(), Backend)
