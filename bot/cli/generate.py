"""`muse generate --task T [--field value …] "text"`: one generation streamed to the terminal."""

from __future__ import annotations

import argparse
import asyncio
import sys

from bot.cli.wiring import build_backend, presets_from, setup_logging
from generation.errors import EngineBusy, EngineDead, GenerationFailed, ModelLoadError, OptionError
from generation.tasks.presets import TASKS
from generation.tasks.task_rules import build_request, finish_text


def add_subcommand(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "generate",
        help="stream one generation to the terminal",
        description=(
            "Stream one generation to the terminal. Task fields are options, e.g. "
            '`muse generate --task dialogue --characters "Innkeeper, Stranger" "a tavern"`.'
        ),
    )
    # The text (the task's main field) and `--field value` pairs are parsed by `parse_fields`:
    # argparse cannot mix a positional with options it does not know in advance.
    parser.add_argument("--task", default="generate", help=f"one of {', '.join(TASKS)}")
    parser.add_argument("--temperature", type=float, help="0.0–2.0 (0 = greedy)")
    parser.add_argument("--max-tokens", type=int, dest="max_new_tokens", help="new tokens cap")
    parser.add_argument("--seed", type=int, help="the same seed and prompt give the same text")
    parser.set_defaults(func=run_generate, accepts_fields=True)


def parse_fields(extra: list[str]) -> tuple[dict[str, str], str | None]:
    """`--characters "A, B" --lines 4 "a tavern"` → `({"characters": "A, B", "lines": "4"},
    "a tavern")`: every `--name` takes the next word as its value; a bare word is the text."""
    fields: dict[str, str] = {}
    text: str | None = None
    items = iter(extra)
    for item in items:
        if not item.startswith("--") or len(item) < 3:
            if text is not None:
                raise OptionError(f"two texts given ({text!r} and {item!r}); quote the text")
            text = item
            continue
        name, sep, value = item[2:].partition("=")
        if not sep:
            value = next(items, None)
            if value is None:
                raise OptionError(f"--{name} needs a value")
        fields[name.replace("-", "_")] = value
    return fields, text


def run_generate(args: argparse.Namespace) -> int:
    settings = args.settings
    setup_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    try:
        presets = presets_from(settings)
        if args.task not in presets:
            raise OptionError(f"unknown task {args.task!r}; tasks: {', '.join(sorted(presets))}")
        preset = presets[args.task]
        fields, text = parse_fields(args.extra)
        if text:
            fields[preset.main_field] = text
        request = build_request(
            preset,
            fields,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            timeout_s=settings.timeout_s,
        )
    except OptionError as exc:
        print(f"muse generate: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_stream(settings, request, preset, fields))


async def _stream(settings, request, preset, fields: dict[str, str]) -> int:
    engine = build_backend(settings)
    try:
        try:
            loaded = await engine.wait_ready()
        except ModelLoadError as exc:
            print(f"muse generate: {exc}", file=sys.stderr)
            return 1
        print(f"[{loaded.model_id} on {loaded.device}]", file=sys.stderr)
        last = None
        async for chunk in engine.stream(request):
            sys.stdout.write(chunk.delta)
            sys.stdout.flush()
            last = chunk
        sys.stdout.write("\n")
        shown = finish_text(preset, fields, last.text)
        if shown != last.text.strip():
            print(f"\n--- as {preset.name} ---\n{shown}", flush=True)
        seconds = (last.total_ms or 0) / 1000
        rate = last.tokens_out / seconds if seconds else 0.0
        print(
            f"— {last.tokens_out} tokens in {seconds:.1f} s ({rate:.1f} tokens/s), "
            f"finish: {last.finish_reason}",
            file=sys.stderr,
        )
        return 0 if last.finish_reason in {"stop", "length"} else 1
    except (EngineBusy, EngineDead, GenerationFailed) as exc:
        print(f"muse generate: {exc}", file=sys.stderr)
        return 1
    finally:
        await engine.aclose()
