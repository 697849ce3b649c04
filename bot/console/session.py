"""The console's read–run loop and the commands that are not generations (`muse console`,
and `muse run` without a token: `bot.cli.console` starts it).

    muse> /story prompt="a dragon" length=short
    muse> /dialogue scene="a tavern" characters="Innkeeper, Stranger" lines=4

Text streams as it is written; then keys rate it (`u`, `d`, `1`–`5` with an optional comment,
`r` regenerates, `s` skips). Everything is stored in `MUSE_DB` like the bot's rows, as the
console user (user id 0, guild id 0), so `muse export` and `muse stats` include it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from bot.console import generations as gen
from bot.console.generations import CONSOLE_GUILD_ID, CONSOLE_USER_ID, Context
from bot.console.parse import ConsoleError, Parsed, commands_for, help_text, parse_line
from bot.console.terminal import Terminal
from bot.core.app import Muse
from bot.core.conversation import chat_plan
from bot.core.errors import report
from bot.core.forgetting import forget
from bot.core.loop.status import loop_status
from generation.backend import ReadyModel
from generation.errors import ModelLoadError, OptionError
from storage.location import describe
from storage.stats import format_table

log = logging.getLogger("muse.bot.console.session")

PROMPT = "muse> "
BANNER = "Muse console — /help lists the commands, /quit (or Ctrl-D) leaves."
HISTORY_COUNT = 5


class Console(Context):
    """The read–run loop and the commands that are not generations."""

    def __init__(
        self, app: Muse, io: Terminal, ready: asyncio.Future[ReadyModel] | None = None
    ) -> None:
        super().__init__(app, io, ready)
        # /chat's conversation: created on first use, under a thread id no Discord thread
        # can have (snowflakes are positive), one per console session.
        self.thread_id = -(secrets.randbelow(2**53) + 1)
        self.conversation_id: int | None = None
        self.commands = commands_for(app.presets)  # the choices of this Muse's presets

    async def serve(self) -> int:
        """Read and run commands until /quit or the end of input; 0."""
        self.io.say(BANNER)
        pending: str | None = None
        while True:
            line = pending if pending is not None else await self.io.read(PROMPT)
            pending = None
            if line is None:
                return 0
            try:
                parsed = parse_line(line, self.commands)
                if parsed is None:
                    continue
                if parsed.command == "quit":
                    return 0
                pending = await self.run(parsed)
            except (ConsoleError, OptionError) as exc:
                self.io.say(f"⚠️ {exc}")
            except ModelLoadError:
                raise
            except Exception as exc:  # noqa: BLE001 - one failed command keeps the session
                self.io.say(report(exc, f"console {line.split(maxsplit=1)[0]}"))

    async def run(self, parsed: Parsed) -> str | None:
        """Run one command; returns a /command typed at a key prompt, to run next."""
        name, values = parsed.command, dict(parsed.values)
        if name == "generate":
            plan = gen.plan_for(
                self,
                "generate",
                {"prompt": values["prompt"]},
                temperature=values.get("temperature"),
                max_new_tokens=values.get("max_tokens"),
            )
            generation_id = await gen.generate(self, plan)
        elif name == "chat":
            generation_id = await self.chat(str(values["message"]))
        elif name == "compare":
            return await gen.compare(
                self, str(values.get("task", "generate")), str(values["prompt"])
            )
        elif name == "arena":
            return await gen.arena(self, str(values.get("task", "generate")), str(values["prompt"]))
        elif hasattr(self, f"cmd_{name}"):
            await getattr(self, f"cmd_{name}")(**values)
            return None
        else:  # a task's command (/story, /dialogue, …): its options are the task's fields
            task = str(values.pop("task", name))  # /dialogue task=screenplay: another dialogue
            generation_id = await gen.generate(self, gen.plan_for(self, task, values))
        return None if generation_id is None else await gen.keys(self, generation_id)

    async def chat(self, message: str) -> int | None:
        """One /chat turn with this session's history (kept in the store's conversations)."""
        gen.plan_for(self, "chat", {"message": message})  # refuse bad fields before storing
        if self.conversation_id is None:
            conversation = await self.app.store.create_conversation(
                self.thread_id, user_id=CONSOLE_USER_ID, guild_id=CONSOLE_GUILD_ID
            )
            self.conversation_id = conversation.id
        await self.wait_ready()  # the history budget depends on the model's context
        plan = await chat_plan(self.app, CONSOLE_USER_ID, message, self.conversation_id)
        return await gen.generate(self, plan)

    async def cmd_help(self) -> None:
        self.io.say(help_text(self.commands))

    async def cmd_history(self, count: int = HISTORY_COUNT) -> None:
        """The console user's newest generations."""
        rows = await self.app.store.recent_generations(CONSOLE_USER_ID, CONSOLE_GUILD_ID, count)
        if not rows:
            self.io.say("No generations yet.")
        for row in rows:
            text = " ".join((row.output or "").split())
            text = text if len(text) <= 60 else text[:59] + "…"
            parent = f" (from #{row.parent_id})" if row.parent_id else ""
            when = row.created_utc.strftime("%Y-%m-%d %H:%M")
            self.io.say(f"#{row.id} {when} {row.task} {row.status}{parent}: {text}")

    async def cmd_privacy(self, training: str | None = None) -> None:
        """What is kept; `training=deny` opts the console user out of training exports."""
        if training is not None:
            await self.app.store.set_opted_out(CONSOLE_USER_ID, training == "deny")
            self.io.say(
                "Your texts and ratings are left out of training exports from now on."
                if training == "deny"
                else "Your texts and ratings may be used in training exports again."
            )
            return
        out = await self.app.store.is_opted_out(CONSOLE_USER_ID)
        self.io.say(
            f"Muse keeps your prompts, the generated texts, your ratings and votes in "
            f"{describe(self.app.settings.db_path)} (as user {CONSOLE_USER_ID}). Training exports: "
            f"{'denied' if out else 'allowed'}. /privacy training=deny opts out; "
            "/forget deletes all of it."
        )

    async def cmd_forget(self) -> None:
        """Delete everything about the console user, after a y/N question."""
        answer = await self.io.read(
            "Delete all your generations, ratings, votes and conversations? [y/N] ", always=True
        )
        if (answer or "").strip().lower() not in ("y", "yes"):
            self.io.say("Nothing was deleted.")
            return
        counts = await forget(self.app, CONSOLE_USER_ID)
        self.conversation_id = None
        done = ", ".join(f"{n} {table}" for table, n in counts.items() if n)
        self.io.say(f"🗑️ Forgotten: {done or 'there was nothing to delete'}.")

    async def cmd_loop(self, action: str = "status") -> None:
        """`/loop status`: the console's loop (the console's server is id 0)."""
        if action.strip().lower() != "status":
            self.io.say("The console has /loop status only; the others are Discord's.")
            return
        shown = await loop_status(self.app.store, self.app.settings, CONSOLE_GUILD_ID)
        self.io.say(shown.render())

    async def cmd_stats(self) -> None:
        """The console's rating summary (`muse stats` shows every guild)."""
        self.io.say(format_table(await self.app.store.stats(CONSOLE_GUILD_ID)))
