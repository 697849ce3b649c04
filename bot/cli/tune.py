"""`muse tune`: export the community's data to a temporary folder, train a LoRA adapter on it
(`generation.tuning`), and register it in the store's models table.

    muse tune --name house-style                 # auto: DPO, else KTO, else SFT
    muse tune --name house-style --method sft --max-steps 40 --dry-run
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from bot.cli.data import _db_path, _parse_date
from bot.core.settings import Settings
from generation.tuning import (
    ProgressEvent,
    TuneConfig,
    TuningError,
    TuningStopped,
    choose_method,
    load_examples,
    tune,
)
from generation.tuning.data import count
from storage.errors import ModelExists, StorageError
from storage.export import ExportFilters
from storage.models import ModelRecord
from storage.store import Store

FORMATS = ("sft", "dpo", "kto")
EXIT_STOPPED = 130


def add_subcommand(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "tune",
        help="train a LoRA adapter on the community's ratings and edits, and register it",
        description=(
            "Export the rated texts and edits (opted-out, forgotten and deleted never included), "
            "train a LoRA adapter with TRL and PEFT, write it to MUSE_ADAPTERS_DIR/NAME and "
            "register it; Muse serves it after a restart (/model, muse models default)."
        ),
    )
    parser.add_argument("--name", required=True, help="the adapter's name (letters, digits, -_.)")
    parser.add_argument("--method", default="auto", choices=("auto", "sft", "dpo", "kto"))
    parser.add_argument("--base", metavar="MODEL", help="base model (default: MUSE_MODEL's)")
    parser.add_argument("--epochs", type=float, metavar="N", help="passes over the data")
    parser.add_argument("--max-steps", type=int, metavar="N", help="stop after N steps")
    parser.add_argument("--lr", type=float, metavar="X", help="learning rate")
    parser.add_argument("--lora-r", type=int, metavar="N", help="LoRA rank (default 16)")
    parser.add_argument("--min-score", type=int, metavar="N", help="as muse export --min-score")
    parser.add_argument("--guild", type=int, metavar="ID", help="only this guild's data")
    parser.add_argument("--task", metavar="T", help="only this task's data")
    parser.add_argument("--since", type=_parse_date, metavar="YYYY-MM-DD", help="only newer data")
    parser.add_argument(
        "--eval-share", type=float, default=0.1, metavar="F", help="held-out share (0.1)"
    )
    parser.add_argument("--force", action="store_true", help="replace an adapter of that name")
    parser.add_argument("--dry-run", action="store_true", help="count the data; train nothing")
    parser.add_argument("--db", metavar="PATH", help="SQLite file (default: $MUSE_DB)")
    parser.set_defaults(func=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    """The handler: 0 done, 1 the store or the training failed, 2 bad input, too little data
    or a base that will not load, 130 stopped with Ctrl-C (nothing written)."""
    settings: Settings = args.settings
    if not 0 <= args.eval_share < 1:
        return _fail("--eval-share must be from 0 to just under 1.", 2)
    filters = ExportFilters(
        min_score=args.min_score, since=args.since, guild_id=args.guild, task=args.task
    )
    with tempfile.TemporaryDirectory(prefix="muse-tune-") as folder:
        try:
            files = asyncio.run(export_all(_db_path(args), Path(folder), filters, args))
        except (StorageError, ModelExists) as exc:
            return _fail(str(exc), 2 if isinstance(exc, ModelExists) else 1)
        if args.dry_run:
            return dry_run(files, args.method)
        config = TuneConfig(
            name=args.name,
            files=files,
            adapters_dir=settings.adapters_dir,
            method=args.method,
            base=args.base or settings.model or None,
            epochs=args.epochs,
            max_steps=args.max_steps,
            lr=args.lr,
            lora_r=args.lora_r,
            eval_share=args.eval_share,
            force=args.force,
            device=settings.device,
            cache_dir=settings.cache_dir,
        )
        try:
            result = tune(config, progress=ProgressLine())
        except TuningStopped:
            print("\nmuse tune: stopped; nothing was written.", file=sys.stderr)
            return EXIT_STOPPED
        except TuningError as exc:  # too little data, a bad name, a base that will not load
            return _fail(str(exc), 2)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: one line, nothing written
            return _fail(f"training failed: {exc}", 1)
    record = ModelRecord(
        name=args.name,
        base_model=str(result.card.get("base", {}).get("id") or config.base or "default"),
        adapter_path=str(result.path.resolve()),  # Muse may start from another folder
        method=result.method,
        data={"counts": result.card.get("data", {}).get("counts", {}), "reason": result.reason},
        metrics={"before": result.metrics_before, "after": result.metrics_after},
    )
    asyncio.run(register(_db_path(args), record))
    print(summary(result))
    return 0


async def export_all(
    db: Path, folder: Path, filters: ExportFilters, args: argparse.Namespace
) -> dict[str, Path]:
    """Each training format's export file in `folder` (tuning never reads the database); a
    registered name is refused unless --force."""
    async with Store.open(db, mark_interrupted=False) as store:
        existing = await store.get_model(args.name)
        if existing is not None and not args.force and not args.dry_run:
            raise ModelExists(args.name)
        files = {}
        for fmt in FORMATS:
            path = folder / f"{fmt}.jsonl"
            with path.open("w", encoding="utf-8") as out:
                await store.export(fmt, out, filters)
            files[fmt] = path
        return files


async def register(db: Path, record: ModelRecord) -> None:
    async with Store.open(db, mark_interrupted=False) as store:
        await store.register_model(record, replace=True)


def dry_run(files: dict[str, Path], method: str) -> int:
    """What would be trained on: rows per format, and the method `auto` would pick."""
    for fmt, path in files.items():
        rows = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        print(f"{fmt}: {rows} rows")
    try:
        choice = choose_method(count(load_examples(files)), method)
    except TuningError as exc:
        print(f"would not train: {exc}")
        return 2
    print(f"would train: {choice.reason}")
    return 0


class ProgressLine:
    """One line on the terminal, rewritten: the phase, a bar of the steps and the loss."""

    def __call__(self, event: ProgressEvent) -> None:
        if event.phase != "train" or not event.total:
            print(f"{event.phase}: {event.message}".rstrip(": "), file=sys.stderr, flush=True)
            return
        done = round(20 * event.step / event.total)
        loss = f" loss {event.loss:.3f}" if event.loss is not None else ""
        bar = "#" * done + "." * (20 - done)
        end = "\n" if event.step >= event.total else ""
        print(f"\rtrain [{bar}] {event.step}/{event.total}{loss}", end=end, file=sys.stderr)
        sys.stderr.flush()


def summary(result: Any) -> str:
    """The run in a few lines: where, how and why, on what, and the held-out metrics."""
    lines = [
        f"adapter {result.path.name} written to {result.path} ({result.seconds:.0f} s)",
        f"method: {result.reason}",
    ]
    for split, counts in result.counts.items():
        lines.append(f"{split}: {counts}")
    for key in sorted(set(result.metrics_before) | set(result.metrics_after)):
        before, after = result.metrics_before.get(key), result.metrics_after.get(key)
        lines.append(f"held-out {key}: {_num(before)} → {_num(after)}")
    lines.append(f"registered; serve it with: muse models default {result.path.name} --guild ID")
    return "\n".join(lines)


def _num(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _fail(message: str, code: int) -> int:
    print(f"muse tune: {message}", file=sys.stderr)
    return code
