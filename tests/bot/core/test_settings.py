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


@pytest.mark.parametrize(
    ("raw", "size"),
    [("auto", None), ("", None), ("4GiB", 4 << 30), ("512MiB", 512 << 20),
     ("3.5G", int(3.5 * 2**30)), ("2000000000", 2_000_000_000), ("1 gb", 1 << 30)],
)  # fmt: skip
def test_muse_memory_is_auto_or_a_size(monkeypatch: pytest.MonkeyPatch, raw: str, size) -> None:
    from generation.model.memory import parse_memory

    monkeypatch.setenv("MUSE_MEMORY", raw)
    assert Settings.load(env_file=None).memory == (raw or "auto")
    assert parse_memory(raw) == size


@pytest.mark.parametrize("raw", ["lots", "4 GiBs", "-1G", "0", "G"])
def test_a_bad_muse_memory_is_refused_with_its_name(monkeypatch: pytest.MonkeyPatch, raw) -> None:
    from bot.core.settings import SettingsError

    monkeypatch.setenv("MUSE_MEMORY", raw)
    with pytest.raises(SettingsError, match="MUSE_MEMORY"):
        Settings.load(env_file=None)
