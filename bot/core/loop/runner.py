"""The loop itself: every `MUSE_LOOP_CHECK_S` it looks at each guild whose loop is on and moves
it one step — collecting → training (a tune in a child process) → checking (the adapter served,
its held-out loss and probe texts checked) → arena (the challenger battles the default) → a
decision by the final votes (promoted, retired, or retired after `MUSE_LOOP_MAX_DAYS` as "no
clear difference") → collecting. Every state is stored, so a restart goes on where it was (a
tune a killed bot left `training` runs again); one tune at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bot.core.app import Muse
from bot.core.loop.checks import PROBE_TOKENS, PROBES, degenerate, loss_verdict
from bot.core.loop.status import arena_standing, default_name, thresholds, training_rows
from bot.core.loop.tuner import TuneOutcome, run_tune
from bot.core.model_choice import BASE
from generation.types import GenerationRequest, Message
from storage.rows import LoopState

log = logging.getLogger("muse.bot.core.loop.runner")

Announce = Callable[[int, int, str], Awaitable[None]]  # guild, channel, text
MIN_VOTERS = 3


class LoopRunner:
    """Drives every guild's loop inside the running bot; `start()` once, `close()` at exit."""

    def __init__(
        self,
        app: Muse,
        *,
        tune_command: Sequence[str],
        announce: Announce,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.app = app
        self.tune_command = tuple(tune_command)
        self.announce_to = announce
        self.env = dict(os.environ if env is None else env)
        self._task: asyncio.Task[None] | None = None
        self._tune: asyncio.Task[None] | None = None
        self._tuning: int | None = None  # the guild whose tune runs in this process
        self._lock = asyncio.Lock()  # one step of one guild at a time

    def start(self) -> LoopRunner:
        self._task = asyncio.create_task(self._run(), name="muse-loop")
        return self

    async def close(self) -> None:
        """Stop looking; a running tune's child is killed (the next start runs it again)."""
        for task in (self._task, self._tune):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _run(self) -> None:
        while True:
            await self.check_all()
            await asyncio.sleep(self.app.settings.loop_check_s)

    async def check_all(self) -> None:
        """One look at every guild whose loop is on; a failure in one is logged, not fatal."""
        for loop in await self.app.store.enabled_loops():
            try:
                async with self._lock:
                    await self._step(await self.app.store.get_loop(loop.guild_id))
            except Exception:
                log.exception("the loop of guild %d failed a step", loop.guild_id)

    async def _step(self, loop: LoopState) -> None:
        if loop.state == "collecting":
            limits = thresholds(loop, self.app.settings)
            rows = await training_rows(self.app.store, loop.guild_id)
            if rows - loop.rows_at_last_tune >= limits.min_examples and self._tune is None:
                await self._start_tune(loop.guild_id, rows)
        elif loop.state == "training":
            if self._tune is None:  # a tune this process did not start: a restart, run it again
                await self._start_tune(loop.guild_id, loop.rows_at_last_tune)
        elif loop.state == "checking":
            await self._check(loop)
        elif loop.state == "arena":
            await self._decide(loop)

    # --- tune ------------------------------------------------------------------------------

    async def tune_now(self, guild_id: int) -> str:
        """`/loop tune`: start a tune now if nothing runs and the data allows it (a dry run of
        the same command says what is missing)."""
        if not (await self.app.store.get_loop(guild_id)).enabled:
            return "The learning loop is off here: turn it on with `/loop set enabled:true`."
        if self._tune is not None:
            return "⏳ A tune is already running; `/loop status` shows its progress."
        dry = await run_tune([*self._command(guild_id), "--dry-run"], self._env(), _ignore)
        if dry.code != 0:
            return f"Not enough to tune on yet: {dry.reason}"
        async with self._lock:
            await self._start_tune(guild_id, await training_rows(self.app.store, guild_id))
        return "🧪 Tuning started: it runs beside the bot; `/loop status` shows its progress."

    def _command(self, guild_id: int) -> list[str]:
        steps = self.app.settings.loop_max_steps
        return [*self.tune_command, "--guild", str(guild_id),
                *(("--max-steps", str(steps)) if steps else ())]  # fmt: skip

    def _env(self) -> dict[str, str]:
        threads = max(1, (self.app.settings.threads or os.cpu_count() or 2) - 1)
        return {
            **self.env,
            "MUSE_DB": _db_for_child(self.app.settings.db_path),
            "MUSE_THREADS": str(threads),  # fewer than the engine's: the bot keeps answering
            "OMP_NUM_THREADS": str(threads),
        }

    async def _start_tune(self, guild_id: int, rows: int) -> None:
        await self.app.store.update_loop(
            guild_id, state="training", rows_at_last_tune=rows, progress={"phase": "starting"}
        )
        self._tuning = guild_id
        self._tune = asyncio.create_task(self._tune_guild(guild_id), name=f"muse-tune-{guild_id}")

    async def _tune_guild(self, guild_id: int) -> None:
        store = self.app.store

        async def progress(report: dict[str, Any]) -> None:
            await store.update_loop(guild_id, progress=report)

        try:
            outcome: TuneOutcome = await run_tune(self._command(guild_id), self._env(), progress)
            if outcome.code != 0:
                await store.update_loop(
                    guild_id, state="collecting", progress={"error": outcome.reason}
                )
                await self._say(guild_id, f"⚠️ The tune stopped: {outcome.reason}")
                return
            async with self._lock:  # the child handed over (`checking`); a look may have won
                await self._step(await store.get_loop(guild_id))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the tune of guild %d failed", guild_id)
        finally:
            self._tune, self._tuning = None, None

    # --- check -----------------------------------------------------------------------------

    async def _check(self, loop: LoopState) -> None:
        """Serve the new adapter, then let it into the arena only if it learnt and speaks."""
        name, guild_id = loop.challenger, loop.guild_id
        record = await self.app.store.get_model(name) if name else None
        if record is None or record.retired or not record.visible_to(guild_id):
            await self.app.store.update_loop(guild_id, state="collecting", challenger=None)
            return
        why = loss_verdict(record.metrics)
        if why is None:
            try:
                await self._serve(record.name, record.adapter_path)
                why = await self._probe(record.name)
            except Exception as exc:  # noqa: BLE001 - any refusal retires it, with the reason
                why = f"it could not be served: {exc}"
        if why is not None:
            await self._retire(guild_id, record.name, why, {})
            return
        await self.app.store.update_loop(
            guild_id, state="arena", arena_since_utc=_now(), progress={}
        )
        default = await default_name(self.app.store, guild_id)
        await self.app.store.add_loop_event(
            guild_id, "arena", record.name, f"challenges {default}", {}
        )
        trained = record.data.get("counts", {})
        await self._say(
            guild_id,
            f"🧪 A new model, **{record.name}**, tuned on this server's ratings and edits "
            f"({_rows(trained)}), now challenges **{default}** in the arena. Try `/arena` and "
            "vote blind: the votes decide whether it becomes this server's default.",
        )

    async def _serve(self, name: str, path: str) -> None:
        """Load the adapter unless the engine serves it already: a bot restarted while its loop
        was `checking` loads every registered adapter at start, the challenger among them, and
        adding it again would be refused ("already served") and retire a good model."""
        await self.app.engine.wait_ready()
        if name not in self.app.engine.models():
            await self.app.engine.add_adapter(name, path)

    async def _probe(self, name: str) -> str | None:
        """Why the adapter's texts on the probe prompts are degenerate, or None."""
        for prompt in PROBES:
            request = GenerationRequest(
                messages=(Message("user", prompt),),
                max_new_tokens=PROBE_TOKENS,
                temperature=0.0,
                seed=0,
                model=name,
                user_key="muse-loop",
            )
            text = (await self.app.engine.generate(request)).text
            why = degenerate(text)
            if why is not None:
                return f"its answer to {prompt!r} is degenerate: {why}"
        return None

    # --- decide ----------------------------------------------------------------------------

    async def _decide(self, loop: LoopState) -> None:
        guild_id, challenger = loop.guild_id, loop.challenger
        if challenger is None:
            await self.app.store.update_loop(guild_id, state="collecting")
            return
        limits = thresholds(loop, self.app.settings)
        default = await default_name(self.app.store, guild_id)
        record = await arena_standing(self.app.store, guild_id, challenger, default)
        figures = {"votes": record.votes, "voters": record.voters, "p_better": record.p_better,
                   "win_rate": record.win_rate}  # fmt: skip
        if record.votes >= limits.min_votes and record.voters >= MIN_VOTERS:
            p = record.p_better or 0.0
            if p >= limits.confidence:
                await self._promote(loop, challenger, default, figures)
                return
            if p <= 1 - limits.confidence:
                why = f"the arena preferred {default} (P(better) = {p:.2f})"
                await self._retire(guild_id, challenger, why, figures)
                return
        since = loop.arena_since_utc or _now()
        if _now() - since > timedelta(days=self.app.settings.loop_max_days):
            why = f"no clear difference after {self.app.settings.loop_max_days:g} days"
            await self._retire(guild_id, challenger, why, figures)

    async def _promote(
        self, loop: LoopState, challenger: str, default: str, figures: dict[str, Any]
    ) -> None:
        store, guild_id = self.app.store, loop.guild_id
        await store.update_guild_settings(guild_id, default_model=challenger)
        await store.update_loop(
            guild_id, state="collecting", challenger=None, previous_default=default, progress={}
        )
        reason = (
            f"won {figures['win_rate']:.0%} of {figures['votes']} votes; "
            f"P(better) = {figures['p_better']:.2f}"
        )
        await store.add_loop_event(guild_id, "promoted", challenger, reason, figures)
        await self._say(
            guild_id,
            f"🏆 **{challenger}** beat **{default}** in the arena ({reason}): it writes this "
            "server's texts from now on. A manager can undo this with `/loop rollback`.",
        )

    async def _retire(self, guild_id: int, name: str, why: str, figures: dict[str, Any]) -> None:
        await self.app.store.retire_model(name, why)
        await self._unserve(name)
        await self.app.store.update_loop(guild_id, state="collecting", challenger=None, progress={})
        await self.app.store.add_loop_event(guild_id, "retired", name, why, figures)
        default = await default_name(self.app.store, guild_id)
        await self._say(
            guild_id, f"🗄️ **{name}** was retired: {why}. **{default}** stays the default."
        )

    # --- managers and /forget --------------------------------------------------------------

    async def rollback(self, guild_id: int) -> str:
        """`/loop rollback`: the previous default back, the current one retired."""
        async with self._lock:
            store = self.app.store
            loop = await store.get_loop(guild_id)
            current = (await store.get_guild_settings(guild_id)).default_model
            previous = loop.previous_default
            if previous is None or current is None:
                return "Nothing to roll back: the loop has not promoted a model here."
            back = None if previous == BASE else previous
            if back is not None:
                record = await store.get_model(back)
                if record is None or record.retired:
                    back, previous = None, BASE
            await store.retire_model(current, "rolled back by a manager")
            await self._unserve(current)
            await store.update_guild_settings(guild_id, default_model=back)
            await store.update_loop(guild_id, previous_default=None)
            await store.add_loop_event(
                guild_id, "rolled_back", current, f"{previous} is the default again", {}
            )
        text = f"↩️ Rolled back: **{previous}** writes this server's texts again; " \
            f"**{current}** is retired."  # fmt: skip
        await self._say(guild_id, text)
        return text

    async def models_retired(self, names: Sequence[str], reason: str) -> None:
        """Models retired elsewhere (`/forget`): they leave the engine, each guild that used one
        as its default gets its previous default (or the base) back, a challenger among them
        leaves the arena, and the loop retrains without the forgotten rows."""
        gone = set(names)
        for name in names:
            await self._unserve(name)
        store = self.app.store
        for loop in await store.enabled_loops():
            guild_id = loop.guild_id
            current = (await store.get_guild_settings(guild_id)).default_model
            touched = [n for n in (current, loop.challenger) if n in gone]
            if not touched:
                continue
            changes: dict[str, Any] = {"rows_at_last_tune": 0}
            if loop.challenger in gone:
                changes.update(state="collecting", challenger=None)
            if current in gone:
                back = loop.previous_default if loop.previous_default not in gone else None
                record = await store.get_model(back) if back not in (None, BASE) else None
                back = back if record is not None and not record.retired else None
                await store.update_guild_settings(guild_id, default_model=back)
                changes["previous_default"] = None
            await store.update_loop(guild_id, **changes)
            for name in touched:
                await store.add_loop_event(guild_id, "retired", name, reason, {})
            default = await default_name(store, guild_id)
            await self._say(
                guild_id,
                f"🗄️ {', '.join(f'**{n}**' for n in touched)} retired: {reason}. This server's "
                f"texts come from **{default}**; the loop will tune again without those rows.",
            )

    async def _unserve(self, name: str) -> None:
        """A retired model leaves the engine: every loaded adapter adds work to each adapter
        row's step. One still answering a request stays loaded until the next start."""
        if name not in self.app.engine.models():
            return
        try:
            await self.app.engine.remove_adapter(name)
        except Exception as exc:  # noqa: BLE001 - in use, or a server that cannot unload
            log.info("the retired %r stays loaded until the next start: %s", name, exc)

    async def _say(self, guild_id: int, text: str) -> None:
        loop = await self.app.store.get_loop(guild_id)
        log.info("loop of guild %d: %s", guild_id, text)
        if loop.channel_id is not None:
            try:
                await self.announce_to(guild_id, loop.channel_id, text)
            except Exception:
                log.warning("could not announce in channel %d", loop.channel_id, exc_info=True)


async def _ignore(report: dict[str, Any]) -> None:
    return None


def _now() -> datetime:
    return datetime.now(UTC)


def _rows(counts: Mapping[str, Any]) -> str:
    train = counts.get("train") or {}
    rows = train.get("rows") if isinstance(train, dict) else None
    return f"{rows} training rows" if rows else "its training rows"


def _db_for_child(db: Path | str) -> str:
    """MUSE_DB for a child process: a file's absolute path (the child's folder may differ),
    a URL as is."""
    return str(db.resolve()) if isinstance(db, Path) else db
