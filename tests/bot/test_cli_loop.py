"""`muse loop tune` from the shell: what it would train on a community's edits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.cli import main as cli
from tests.bot.test_cli_tune import community


def test_the_loop_learns_edits_by_sft_unless_told_otherwise(tmp_path: Path, capsys):
    db = tmp_path / "muse.db"
    asyncio.run(community(db, 12))  # twelve edits: twelve preference pairs too
    dry = ["loop", "tune", "--guild", "1", "--dry-run", "--db", str(db)]
    assert cli.main(dry) == 0
    assert "would train: requested; 12 SFT rows" in capsys.readouterr().out
    assert cli.main([*dry, "--method", "auto"]) == 0
    assert "would train: 12 preference pairs (DPO needs 8): DPO" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main([*dry, "--method", "ppo"])
