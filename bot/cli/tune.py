"""`muse tune`: export the community's data to a temporary folder, train a LoRA adapter on it
(`generation.tuning`), and register it in the store's models table.

    muse tune --name house-style                 # auto: DPO, else KTO, else SFT
    muse tune --name house-style --method sft --max-steps 40 --dry-run
    muse tune --name house-style --guild 123     # a database with several servers' data

The export leaves self-ratings out (unless --include-self) and the data rules
(`generation.tuning.rules`: --max-share, --min-contributors) run before the method is chosen.
The model belongs to the guild whose data trained it, or to no guild with --all-guilds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from bot.cli.data import _db_path, _parse_date
from bot.core.model_choice import BASE
from bot.core.settings import Settings
from generation.tuning import (
    ProgressEvent,
    Rules,
    Screened,
    TuneConfig,
    TuningError,
    TuningStopped,
    decide,
    load_examples,
    screen_all,
    tune,
)
from generation.tuning.rules import MAX_SHARE, MIN_CONTRIBUTORS
from storage.errors import ModelExists, StorageError
from storage.export import ExportFilters
from storage.rows import ModelRecord
from storage.store import Store

FORMATS = ("sft", "dpo", "kto")
EXIT_STOPPED = 130


class Refusal(Exception):
    """`muse tune` will not run as asked; the message says why and what to pass (exit 2)."""


def add_subcommand(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "tune",
        help="train a LoRA adapter on the community's ratings and edits, and register it",
        description=(
            "Export the rated texts and edits (opted-out, forgotten and deleted never included), "
            "train a LoRA adapter with TRL and PEFT, write it to MUSE_ADAPTERS_DIR/NAME and "
            "register it; Muse serves it after a restart (/model, muse models default). "
            "Self-ratings do not count, no member supplies more than --max-share of the rows, "
            "and the rows must come from at least --min-contributors members."
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
    owner = parser.add_mutually_exclusive_group()
    owner.add_argument(
        "--guild", type=int, metavar="ID", help="only this guild's data; the model is its own"
    )
    owner.add_argument(
        "--all-guilds",
        action="store_true",
        help="every guild's data: a host-wide model that every guild sees",
    )
    parser.add_argument("--task", metavar="T", help="only this task's data")
    parser.add_argument("--since", type=_parse_date, metavar="YYYY-MM-DD", help="only newer data")
    parser.add_argument(
        "--eval-share", type=float, default=0.1, metavar="F", help="held-out share (0.1)"
    )
    parser.add_argument(
        "--max-share",
        type=float,
        default=MAX_SHARE,
        metavar="F",
        help=f"most of the rows one member may supply ({MAX_SHARE})",
    )
    parser.add_argument(
        "--min-contributors",
        type=int,
        default=MIN_CONTRIBUTORS,
        metavar="N",
        help=f"fewest members the rows must come from ({MIN_CONTRIBUTORS})",
    )
    parser.add_argument(
        "--include-self",
        action="store_true",
        help="count requesters' ratings of their own texts (left out by default)",
    )
    parser.add_argument("--force", action="store_true", help="replace an adapter of that name")
    parser.add_argument("--dry-run", action="store_true", help="count the data; train nothing")
    parser.add_argument(
        "--db", metavar="PATH", help="SQLite file or postgresql:// URL (default: $MUSE_DB)"
    )
    parser.set_defaults(func=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    """The handler: 0 done, 1 the store or the training failed, 2 bad input, too little data,
    too few contributors, a missing --guild/--all-guilds or a base that will not load, 130
    stopped with Ctrl-C (nothing written)."""
    settings: Settings = args.settings
    if not 0 <= args.eval_share < 1:
        return _fail("--eval-share must be from 0 to just under 1.", 2)
    if args.name.strip().lower() == BASE:
        return _fail(f"{args.name!r} names the base model: pick another name.", 2)
    if not 0 < args.max_share <= 1:
        return _fail("--max-share must be above 0 and at most 1.", 2)
    if args.min_contributors < 1:
        return _fail("--min-contributors must be at least 1.", 2)
    rules = Rules(max_share=args.max_share, min_contributors=args.min_contributors)
    filters = ExportFilters(
        min_score=args.min_score,
        since=args.since,
        guild_id=args.guild,
        task=args.task,
        include_self=args.include_self,
    )
    with tempfile.TemporaryDirectory(prefix="muse-tune-") as folder:
        try:
            owner, files = asyncio.run(export_all(_db_path(args), Path(folder), filters, args))
        except (StorageError, ModelExists, Refusal) as exc:
            return _fail(str(exc), 2 if isinstance(exc, ModelExists | Refusal) else 1)
        if args.dry_run:
            return dry_run(files, args.method, rules, owner)
        print(ownership(owner), file=sys.stderr)
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
            rules=rules,
        )
        try:
            result = tune(config, progress=ProgressLine())
        except TuningStopped:
            print("\nmuse tune: stopped; nothing was written.", file=sys.stderr)
            return EXIT_STOPPED
        except TuningError as exc:  # too little data or too few members, a bad name, a base
            return _fail(str(exc), 2)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: one line, nothing written
            return _fail(f"training failed: {exc}", 1)
    record = ModelRecord(
        name=args.name,
        base_model=str(result.card.get("base", {}).get("id") or config.base or "default"),
        adapter_path=str(result.path.resolve()),  # Muse may start from another folder
        method=result.method,
        data=model_data(result, args.include_self),
        metrics={"before": result.metrics_before, "after": result.metrics_after},
        owner_guild_id=owner,
        contributors=result.contributors,
    )
    asyncio.run(register(_db_path(args), record))
    print(summary(result, owner))
    return 0


def model_data(result: Any, include_self: bool) -> dict[str, Any]:
    """What the registry says a model was trained on: counts, why this method, the rules."""
    data = result.card.get("data", {})
    return {
        "counts": data.get("counts", {}),
        "reason": result.reason,
        "rules": {**data.get("rules", {}), "include_self": include_self},
        "contributors": len(result.contributors),
    }


async def export_all(
    db: Path | str, folder: Path, filters: ExportFilters, args: argparse.Namespace
) -> tuple[int | None, dict[str, Path]]:
    """The model's owner, and each training format's export file in `folder` (tuning never
    reads the database); a registered name is refused unless --force, and a database holding
    several guilds' data without --guild or --all-guilds."""
    async with Store.open(db, mark_interrupted=False) as store:
        existing = await store.get_model(args.name)
        if existing is not None and not args.force and not args.dry_run:
            raise ModelExists(args.name)
        owner = owner_of(args, await store.data_guild_ids())
        files = {}
        for fmt in FORMATS:
            path = folder / f"{fmt}.jsonl"
            with path.open("w", encoding="utf-8") as out:
                await store.export(fmt, out, filters)
            files[fmt] = path
        return owner, files


def owner_of(args: argparse.Namespace, guilds: list[int]) -> int | None:
    """The guild the model will belong to (None: host-wide). One guild's data makes that
    guild's model; several need the admin to say which (one server's texts must not reach
    the others by accident)."""
    if args.guild is not None:
        return args.guild
    if args.all_guilds:
        return None
    if len(guilds) > 1:
        shown = ", ".join(map(str, guilds[:5])) + (", …" if len(guilds) > 5 else "")
        raise Refusal(
            f"this database holds data from {len(guilds)} servers ({shown}). Pass --guild ID to "
            "train on one server's data (the model is that server's, and only it sees it), or "
            "--all-guilds to train on every server's data (a host-wide model every server sees)."
        )
    return guilds[0] if guilds else None


def ownership(owner: int | None) -> str:
    """Whose the model will be, in a line."""
    if owner is None:
        return "model: host-wide (every server's data; every server sees it)"
    return f"model: server {owner}'s (its data only; only it sees the model)"


async def register(db: Path | str, record: ModelRecord) -> None:
    async with Store.open(db, mark_interrupted=False) as store:
        await store.register_model(record, replace=True)


def dry_run(files: dict[str, Path], method: str, rules: Rules, owner: int | None) -> int:
    """What would be trained on: rows per format before and after the data rules, how many
    each rule dropped, whose model it would be, and the method (or why none)."""
    try:
        loaded = load_examples(files)
    except TuningError as exc:
        print(f"would not train: {exc}")
        return 2
    screened = screen_all(loaded, rules)
    for fmt, kept in screened.items():
        print(screen_line(fmt, len(loaded[fmt]), kept))
    print(ownership(owner))
    try:
        choice = decide(screened, method, rules)
    except TuningError as exc:
        print(f"would not train: {exc}")
        return 2
    print(f"would train: {choice.reason}")
    return 0


def screen_line(fmt: str, exported: int, kept: Screened) -> str:
    """`sft: 40 rows, 26 kept from 22 members (dropped: one_edit_per_editor 0, …)`."""
    members = len(kept.contributors)
    return (
        f"{fmt}: {exported} rows, {len(kept.examples)} kept from {members} "
        f"member{'' if members == 1 else 's'} (dropped: {kept.describe()})"
    )


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


def summary(result: Any, owner: int | None = None) -> str:
    """The run in a few lines: where, how and why, on what, whose, and the held-out metrics."""
    dropped = ", ".join(f"{rule} {n}" for rule, n in result.dropped.items())
    lines = [
        f"adapter {result.path.name} written to {result.path} ({result.seconds:.0f} s)",
        f"method: {result.reason}",
        f"data rules dropped: {dropped}; trained on rows of {len(result.contributors)} members",
        ownership(owner),
    ]
    for split, counts in result.counts.items():
        lines.append(f"{split}: {counts}")
    for key in sorted(set(result.metrics_before) | set(result.metrics_after)):
        before, after = result.metrics_before.get(key), result.metrics_after.get(key)
        lines.append(f"held-out {key}: {_num(before)} → {_num(after)}")
    guild = "ID" if owner is None else owner
    lines.append(
        f"registered; serve it with: muse models default {result.path.name} --guild {guild}"
    )
    return "\n".join(lines)


def _num(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _fail(message: str, code: int) -> int:
    print(f"muse tune: {message}", file=sys.stderr)
    return code
