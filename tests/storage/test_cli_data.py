"""`muse export` and `muse stats` handlers (bot/cli_data.py), driven through their parser."""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

import pytest

from bot.cli import data as cli_data
from storage.migrations import MIGRATIONS
from tests.cli_process import run_muse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="muse")
    cli_data.add_subcommands(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    return args.func(args)


def test_export_creates_a_missing_database_and_an_empty_file(tmp_path: Path) -> None:
    db, out = tmp_path / "new" / "muse.db", tmp_path / "sft.jsonl"
    assert _run("export", "--format", "sft", "--out", str(out), "--db", str(db)) == 0
    assert out.read_text() == ""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_export_reads_the_database_from_the_environment(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MUSE_DB", str(tmp_path / "env.db"))
    assert _run("export", "--format", "raw", "--out", "-") == 0
    assert capsys.readouterr().out == ""
    assert (tmp_path / "env.db").exists()


def test_a_second_store_in_one_process_is_refused(rated, db_path, tmp_path, capsys) -> None:
    out = tmp_path / "sft.jsonl"
    assert _run("export", "--format", "sft", "--out", str(out), "--db", str(db_path)) == 1
    assert "already open in this process" in capsys.readouterr().err
    assert not out.exists()


def test_export_writes_rows_beside_a_live_store(rated, db_path, tmp_path: Path) -> None:
    # `rated` keeps its store open, as a running bot would.
    out = tmp_path / "kto.jsonl"
    argv = ["export", "--format", "kto", "--out", str(out), "--db", str(db_path)]
    assert run_muse(*argv, "--min-score", "2").returncode == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["metadata"]["generation_id"] for row in rows] == [rated["g1"]]
    filters = ["--since", "2025-03-05", "--guild", "100", "--task", "story"]
    assert run_muse(*argv, *filters).returncode == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["metadata"]["generation_id"] for row in rows] == [rated["g11"]]


@pytest.mark.parametrize(
    "bad",
    [
        ["--format", "sft", "--since", "2025-13-01"],
        ["--format", "sft", "--since", "yesterday"],
        ["--format", "csv"],
        ["--format", "sft", "--min-score", "lots"],
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, capsys, bad) -> None:
    out, db = tmp_path / "out.jsonl", tmp_path / "muse.db"
    with pytest.raises(SystemExit) as caught:
        _run("export", *bad, "--out", str(out), "--db", str(db))
    assert caught.value.code == 2
    assert "error" in capsys.readouterr().err
    assert not out.exists() and not db.exists()


def test_handler_checks_input_itself(tmp_path: Path, capsys) -> None:
    out, db = tmp_path / "out.jsonl", tmp_path / "muse.db"
    args = _parser().parse_args(["export", "--format", "sft", "--out", str(out), "--db", str(db)])
    args.since = "2025-02-30"  # as if built without the parser
    assert cli_data.run_export(args) == 2
    assert "invalid date '2025-02-30'" in capsys.readouterr().err
    args.since, args.format = None, "parquet"
    assert cli_data.run_export(args) == 2
    args.format, args.out = "sft", str(tmp_path / "missing" / "out.jsonl")
    assert cli_data.run_export(args) == 2
    assert "no such directory" in capsys.readouterr().err
    assert not out.exists() and not db.exists()


def test_a_newer_database_is_refused(tmp_path: Path, capsys) -> None:
    db, out = tmp_path / "muse.db", tmp_path / "out.jsonl"
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    assert _run("export", "--format", "sft", "--out", str(out), "--db", str(db)) == 1
    assert "Upgrade Muse" in capsys.readouterr().err
    assert not out.exists()
    assert _run("stats", "--db", str(db)) == 1


def test_stats_prints_a_table_and_writes_a_chart(rated, db_path, tmp_path) -> None:
    chart = tmp_path / "ratings.png"
    done = run_muse("stats", "--db", str(db_path), "--chart", str(chart))
    assert done.returncode == 0, done.stderr
    output = done.stdout
    assert "story" in output and "poem" in output and "describe" in output
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_stats_on_a_missing_database(tmp_path: Path, capsys) -> None:
    assert _run("stats", "--db", str(tmp_path / "none.db")) == 0
    assert "No generations yet." in capsys.readouterr().out
