"""Console generations over the core (`bot.core.run`, `bot.core.compare`): the terminal as the
surface, then rating keys and votes that call the same actions as Discord's buttons, with the
console user as the requester and rater."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.console.parse import RATE_KEYS, VOTE_KEYS, Key, parse_rating, parse_vote
from bot.console.terminal import Terminal
from bot.core import actions, plans
from bot.core.app import Muse
from bot.core.arena import bout_plans, contenders, draw_sides
from bot.core.arena import reveal as reveal_sides
from bot.core.compare import run_compare
from bot.core.edits import editable, improve
from bot.core.plans import Plan, make_plan
from bot.core.policy import Where
from bot.core.run import run
from bot.core.settle import Settled
from bot.core.surface import Shown
from bot.core.texts import DELETED, GONE, finish_note, footer
from generation.backend import ReadyModel
from generation.tasks.presets import DIALOGUE
from generation.types import GenerationChunk

log = logging.getLogger("muse.bot.console.generations")

# The console's requester and rater: a local user and "guild" that no Discord id can be
# (snowflakes are positive). `muse export --guild 0` exports the console's rows alone.
CONSOLE_USER_ID = 0
CONSOLE_GUILD_ID = 0
CONSOLE = Where(CONSOLE_USER_ID, CONSOLE_GUILD_ID, None)
BAD_KEY = "⚠️ keys: u, d, 1–5 (a comment may follow: `4 nice one`), r, e, c, s — or a /command"
EDIT_PROMPT = "✏️ Type the improved text; end it with a line holding only a dot (.):"


@dataclass(slots=True)
class Context:
    """The application and the terminal a console session works with."""

    app: Muse
    io: Terminal
    ready: asyncio.Future[ReadyModel] | None = None
    announced: bool = False

    async def wait_ready(self) -> None:
        """Wait for the model (loaded in the background since start); say which it is once."""
        if self.ready is None:
            self.ready = asyncio.ensure_future(self.app.engine.wait_ready())
        loaded = await asyncio.shield(self.ready)
        if not self.announced:
            self.announced = True
            self.io.say(f"[{loaded.model_id} on {loaded.device}]")


def show_end(io: Terminal, settled: Settled, blind: bool = False) -> None:
    """The normalised dialogue (when it differs), why it ended early, and the footer (which
    names no model when `blind`: the arena's)."""
    last = settled.last
    if settled.kind == DIALOGUE and settled.output != last.text.strip():
        io.say(f"--- as dialogue ---\n{settled.output}")
    note = finish_note(settled.ending)
    if note:
        io.say(note)
    model = "a model" if blind else last.model_id
    io.say(footer(model, last.tokens_out, last.total_ms, settled.persona))


class TerminalLines:
    """What both terminal surfaces say the same way: a refusal, a failure, the notice."""

    def __init__(self, io: Terminal) -> None:
        self.io = io

    async def refuse(self, text: str) -> None:
        self.io.say(text)

    async def fail(self, text: str) -> None:
        self.io.say(text)

    async def notify(self, text: str) -> None:
        self.io.say(text)


class TerminalReply(TerminalLines):
    """`Surface` on the terminal: the text is printed as it streams."""

    async def begin(self) -> int | None:
        return None

    def started(self, generation_id: int | None) -> None:
        return None

    def on_chunk(self, chunk: GenerationChunk) -> None:
        if chunk.delta:
            self.io.write(chunk.delta)
        if chunk.finished:
            self.io.say()

    async def progress(self, latest: GenerationChunk | None, queued: int | None) -> None:
        return None

    async def show(self, settled: Settled) -> Shown:
        show_end(self.io, settled)
        return Shown()


class TerminalCompare(TerminalLines):
    """`CompareSurface` on the terminal: A streams, B is printed when both are done."""

    def __init__(self, io: Terminal, blind: bool = False) -> None:
        super().__init__(io)
        self.first = TerminalReply(io)  # A's text streams as a single reply's would
        self.blind = blind

    async def begin(self) -> int | None:
        self.io.say("A:")
        return None

    def started(self, generation_ids: Sequence[int]) -> None:
        return None

    def on_chunk(self, index: int, chunk: GenerationChunk) -> None:
        if index == 0:
            self.first.on_chunk(chunk)

    async def progress(self, latest: Sequence[GenerationChunk | None]) -> None:
        return None

    async def show(self, takes: Sequence[Settled]) -> Shown:
        for name, take in zip("AB", takes, strict=True):
            if name == "B":
                self.io.say(f"B:\n{take.output}")
            show_end(self.io, take, self.blind)
        return Shown()


def plan_for(ctx: Context, task: str, fields: dict[str, Any], **overrides: Any) -> Plan:
    """The plan for the console user; raises `OptionError` for bad fields."""
    return make_plan(ctx.app, CONSOLE_USER_ID, task, fields, **overrides)


async def generate(ctx: Context, plan: Plan) -> int | None:
    """Record, stream and finish `plan`; the generation id, or None when it was refused."""
    await ctx.wait_ready()
    return await run(ctx.app, plan, CONSOLE, TerminalReply(ctx.io))


async def keys(ctx: Context, generation_id: int) -> str | None:
    """Rating keys for a generation until skipped; returns a /command typed instead, if any."""
    current = generation_id
    while True:
        line = await ctx.io.read(f"{RATE_KEYS} > ", always=True)
        if line is None:
            return None
        if line.lstrip().startswith("/"):
            return line
        key = parse_rating(line)
        if key is None:
            ctx.io.say(BAD_KEY)
        elif key.action == "skip":
            return None
        elif key.action == "regenerate":
            current = await regenerate(ctx, current) or current
        elif key.action == "continue":
            current = await write_on(ctx, current) or current
        elif key.action == "edit":
            await edit(ctx, current)
        else:
            await rate(ctx, current, key)


async def rate(ctx: Context, generation_id: int, key: Key) -> None:
    """👍 / 👎 / stars (with an optional comment), as the bot's buttons and modal store them."""
    if key.action == "stars":
        said = await actions.rate(
            ctx.app, generation_id, CONSOLE_USER_ID, stars=key.stars, comment=key.comment
        )
        said += " and your comment" if key.comment and said != GONE else ""
    else:
        said = await actions.rate(ctx.app, generation_id, CONSOLE_USER_ID, thumbs=key.action)
    ctx.io.say(said if said == GONE else f"{said} for #{generation_id}")


async def regenerate(ctx: Context, generation_id: int) -> int | None:
    """🔁: the parent's messages with a new seed, linked to it (as Discord's 🔁 button)."""
    parent = await actions.live(ctx.app, generation_id)
    if parent is None:
        ctx.io.say(DELETED)
        return None
    plan = plans.regenerate_plan(ctx.app, parent, CONSOLE_USER_ID)
    ctx.io.say(f"🔁 a new take of #{parent.id}:")
    return await generate(ctx, plan)


async def write_on(ctx: Context, generation_id: int) -> int | None:
    """▶: the scene's next lines, or the text written on (as Discord's ▶ button)."""
    parent = await actions.live(ctx.app, generation_id)
    if parent is None:
        ctx.io.say(DELETED)
        return None
    ctx.io.say(f"▶ #{parent.id} goes on:")
    return await generate(ctx, plans.continuation(ctx.app, parent, CONSOLE_USER_ID))


async def edit(ctx: Context, generation_id: int) -> int | None:
    """✏️: the improved text, typed in lines up to a lone `.`, stored as an edit."""
    original, problem = await editable(ctx.app, generation_id)
    if original is None:
        ctx.io.say(problem or DELETED)
        return None
    ctx.io.say(EDIT_PROMPT)
    lines: list[str] = []
    while (line := await ctx.io.read("", always=False)) is not None and line.strip() != ".":
        lines.append(line)
    improved, problem = await improve(ctx.app, generation_id, "\n".join(lines), CONSOLE)
    if improved is None:
        ctx.io.say(problem or "")
        return None
    ctx.io.say(f"✏️ Saved your improvement of #{generation_id} as #{improved.generation_id}.")
    return improved.generation_id


async def compare(ctx: Context, task: str, prompt: str) -> str | None:
    """Two takes (two seeds, decoded together): A streams, B follows; then a vote."""
    first = plan_for(ctx, task, {ctx.app.presets[task].main_field: prompt})
    await ctx.wait_ready()
    ids = await run_compare(ctx.app, first, CONSOLE, TerminalCompare(ctx.io))
    return None if ids is None else await vote(ctx, *ids)


async def arena(ctx: Context, task: str, prompt: str) -> str | None:
    """/arena: the console's default model against a challenger, blind; the vote reveals them."""
    settings = await ctx.app.store.get_guild_settings(CONSOLE_GUILD_ID)
    await ctx.wait_ready()  # which models are served is known once the engine is up
    sides = await contenders(ctx.app, settings, CONSOLE_GUILD_ID)
    if isinstance(sides, str):
        ctx.io.say(sides)
        return None
    first = plan_for(ctx, task, {ctx.app.presets[task].main_field: prompt})
    plan_a, plan_b = bout_plans(first, draw_sides(*sides))
    surface = TerminalCompare(ctx.io, blind=True)
    ids = await run_compare(ctx.app, plan_a, CONSOLE, surface, plan_b)
    return None if ids is None else await vote(ctx, *ids, reveal=True)


async def vote(
    ctx: Context, generation_a: int, generation_b: int, *, reveal: bool = False
) -> str | None:
    """A / B / tie for a comparison; returns a /command typed instead, if any."""
    while True:
        line = await ctx.io.read(f"{VOTE_KEYS} > ", always=True)
        if line is None:
            return None
        if line.lstrip().startswith("/"):
            return line
        key = parse_vote(line)
        if key is None:
            ctx.io.say("⚠️ keys: a, b, t, s — or a /command")
            continue
        if key.action != "skip":
            winner = key.action
            said = await actions.vote(
                ctx.app, generation_a, generation_b, CONSOLE_USER_ID, winner, final=reveal
            )
            if reveal and said.startswith("Thanks"):
                first = await ctx.app.store.get_generation(generation_a)
                second = await ctx.app.store.get_generation(generation_b)
                said += "\n" + reveal_sides(ctx.app.engine.model_id, first, second)
            ctx.io.say(said)
        return None
