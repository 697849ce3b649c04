"""`muse models`: the registered models (the base and the adapters `muse tune` made), each
guild's default, retiring one, and the vLLM command line that serves them all.

    muse models                          # = muse models list
    muse models default house-style --guild 123
    muse models default base             # every guild without its own default: the base
    muse models retire house-style
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from pathlib import Path

from bot.cli.data import _db_path
from bot.core.model_choice import ALL_GUILDS, BASE
from storage.rows import ModelRecord
from storage.store import Store

VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def add_subcommand(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "models",
        help="the registered models: list them, set a guild's default, retire one",
        description="The base model and the LoRA adapters `muse tune` registered.",
    )
    parser.add_argument("action", nargs="?", default="list", choices=("list", "default", "retire"))
    parser.add_argument("name", nargs="?", help="a registered model, or `base`")
    parser.add_argument("--guild", type=int, metavar="ID", help="default: this guild only")
    parser.add_argument(
        "--db", metavar="PATH", help="SQLite file or postgresql:// URL (default: $MUSE_DB)"
    )
    parser.set_defaults(func=run_models)


def run_models(args: argparse.Namespace) -> int:
    """0 done; 2 bad input (no name, an unknown or retired model)."""
    if args.action != "list" and not args.name:
        print(f"muse models {args.action}: name a model (see `muse models`).", file=sys.stderr)
        return 2
    return asyncio.run(_run(_db_path(args), args))


async def _run(db: Path | str, args: argparse.Namespace) -> int:
    async with Store.open(db, mark_interrupted=False) as store:
        if args.action == "list":
            models = await store.list_models(include_retired=True)
            everywhere = (await store.get_guild_settings(ALL_GUILDS)).default_model
            print(listing(models, everywhere))
            return 0
        if args.action == "retire":
            if not await store.retire_model(args.name, "retired with muse models retire"):
                return _refuse(f"no registered model {args.name!r}")
            print(f"retired {args.name}: guilds that used it get the base model again")
            return 0
        name = None if args.name == BASE else args.name
        if name is not None:
            record = await store.get_model(name)
            if record is None or record.retired:
                return _refuse(f"{args.name!r} is not a registered model (see `muse models`)")
            if record.owner_guild_id is not None and record.owner_guild_id != args.guild:
                return _refuse(
                    f"{args.name!r} belongs to guild {record.owner_guild_id}, whose data trained "
                    f"it: it can be the default of that guild only (--guild "
                    f"{record.owner_guild_id})"
                )
        guild = ALL_GUILDS if args.guild is None else args.guild
        await store.update_guild_settings(guild, default_model=name)
        where = "every guild without a default of its own" if args.guild is None else args.guild
        print(f"default model for {where}: {args.name} (takes effect for new generations)")
        return 0


def listing(models: list[ModelRecord], everywhere: str | None) -> str:
    """A table of the models, then how to serve them all with vLLM."""
    header = f"{'name':<24} {'method':<6} {'created (UTC)':<20} {'owner':<20} state"
    lines = [header, f"{BASE:<24} {'-':<6} {'':<20} {'every guild':<20}"]
    for m in models:
        state = (
            f"retired: {m.retired_reason}"
            if m.retired and m.retired_reason
            else ("retired" if m.retired else "serving")
        )
        created = str(m.created_utc)[:19]
        owner = "every guild" if m.owner_guild_id is None else f"guild {m.owner_guild_id}"
        lines.append(f"{m.name:<24} {m.method:<6} {created:<20} {owner:<20} {state}")
    lines.append(f"default for guilds without their own: {everywhere or BASE}")
    live = [m for m in models if not m.retired]
    if live:
        lines += ["", "Serve these with vLLM (then MUSE_BACKEND=openai):", vllm_command(live)]
    return "\n".join(lines)


def vllm_command(models: list[ModelRecord]) -> str:
    """`vllm serve BASE --enable-lora --lora-modules NAME=PATH …` for the adapters."""
    base = adapter_base(Path(models[0].adapter_path)) or models[0].base_model
    modules = " ".join(shlex.quote(f"{m.name}={m.adapter_path}") for m in models)
    largest = max((adapter_rank(Path(m.adapter_path)) for m in models), default=16)
    rank = next((r for r in VLLM_RANKS if r >= largest), largest)  # vLLM takes these only
    return (
        f"vllm serve {shlex.quote(base)} --enable-lora --max-lora-rank {rank} "
        f"--lora-modules {modules}"
    )


def adapter_base(folder: Path) -> str | None:
    """The base model an adapter was trained on (PEFT's `base_model_name_or_path`)."""
    try:
        base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return base if isinstance(base, str) and base else None


def adapter_rank(folder: Path) -> int:
    """The adapter's LoRA rank; 16 where its config does not say (a missing file, a null `r`:
    `muse models` lists every registered model whatever its folder holds)."""
    try:
        rank = json.loads((folder / "adapter_config.json").read_text())["r"]
    except (OSError, ValueError, KeyError, TypeError):
        return 16
    return rank if isinstance(rank, int) and not isinstance(rank, bool) and rank > 0 else 16


def _refuse(message: str) -> int:
    print(f"muse models: {message}", file=sys.stderr)
    return 2
