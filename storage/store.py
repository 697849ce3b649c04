"""The async store the bot talks to: one writer thread with group commit, one read connection.

    async with Store.open("muse.db") as store:
        generation_id = await store.record_generation(user_id=..., task="story", ...)

Writes go through `Writer` (see `storage.writer`) and return only after their transaction
committed. Reads use a separate aiosqlite connection; in WAL mode they never block writes.
With a `postgresql://` URL the same writer runs on a psycopg connection and reads go through
`pg_conn.PgReader` (`storage.pg_opening`); the operations and their SQL are the same.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

import aiosqlite

from storage import arena, reads, retention, writes
from storage.db import Clock, format_utc, utc_now
from storage.export import ExportFilters, export_jsonl
from storage.location import database_target
from storage.loops import LoopRecords
from storage.maintenance import backup_file
from storage.migrations import MIGRATIONS, Migration
from storage.model_registry import ModelRegistry
from storage.opening import Claim, Opening, open_connections
from storage.owners import Owners
from storage.personas import PersonaRecords
from storage.pg_conn import PgReader
from storage.pg_opening import open_postgres
from storage.rows import (
    FINISHED_STATUSES,
    ROLES,
    ArenaVote,
    Conversation,
    FeedbackOutcome,
    Generation,
    GuildSettings,
    Thumbs,
    Winner,
    verdict_of,
)
from storage.slots import Slots
from storage.stats import TaskModelStats, task_stats
from storage.writer import Writer

log = logging.getLogger("muse.storage.store")


def approximate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about four characters a token) for `conversation_history`."""
    return len(text) // 4 + 1


class Store(LoopRecords, ModelRegistry, PersonaRecords, Owners, Slots):
    """Everything the bot stores. Open with `Store.open(path)`; all methods are coroutines."""

    def __init__(
        self,
        path: Path | str,
        writer: Writer,
        reader: aiosqlite.Connection | PgReader,
        clock: Clock,
        claim: Claim | None = None,
    ) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._clock = clock
        self._claim = claim
        self._heartbeat = None
        #: Generations this open found left `running` by a gone process (a crash, or a store
        #: closed mid-stream) and marked `interrupted` (oldest first); the bot edits their
        #: replies to say so. Other processes' live generations are left alone (`Owners`).
        self.interrupted: tuple[int, ...] = ()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        mark_interrupted: bool = True,
        clock: Clock = utc_now,
        migrations: Sequence[Migration] = MIGRATIONS,
        max_batch: int = 1024,
    ) -> Opening[Store]:
        """Open (creating mode 0600 and migrating if needed) the database at `path`: an
        SQLite file, or a `postgresql://` URL (`storage.location`).

        Use as `async with Store.open(path) as store:` or `store = await Store.open(path)`.
        `mark_interrupted=False` is for tools (export, stats) that run beside a live bot and
        do not edit replies, so they leave gone processes' running generations to the bot.
        Raises `DatabaseTooNew`, and `DatabaseReadOnly` when the file (or its folder, where
        the `-wal`/`-shm` files go) cannot be written, and `DatabaseAlreadyOpen` when this
        process has a store open on the file already (pass that one along: see
        `DatabaseAlreadyOpen` for why).
        """
        target = database_target(path)
        return Opening(cls._open(target, clock, mark_interrupted, migrations, max_batch))

    @classmethod
    async def _open(
        cls, target: Path | str, clock: Clock, mark_interrupted: bool, *options: Any
    ) -> Store:
        if isinstance(target, str):
            writer, reader = await open_postgres(target, *options)
            claim = None
        else:
            writer, reader, claim = await open_connections(target, *options)
        store = cls(target, writer, reader, clock, claim)
        try:
            store.interrupted = await store._join(mark_interrupted)
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        """Commit queued writes, then close both connections (and let the file be opened again)."""
        try:
            if self._heartbeat is not None:
                await self._leave()
            await self._writer.close()
            await self._reader.close()
        finally:
            if self._claim is not None:
                self._claim.release()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _now(self) -> str:
        return format_utc(self._clock())

    def _write(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return self._writer.submit(fn, *args)

    # --- generations -----------------------------------------------------------------

    async def record_generation(
        self,
        *,
        user_id: int,
        task: str,
        messages: Sequence[Mapping[str, str]],
        params: Mapping[str, Any],
        model_id: str,
        model_revision: str | None = None,
        fields: Mapping[str, Any] | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        message_id: int | None = None,
        conversation_id: int | None = None,
        parent_id: int | None = None,
    ) -> int:
        """Record a generation before streaming it (status `running`); returns its id.

        `messages` are exactly what the model sees ({role, content}); `params` the sampling
        parameters including the seed; `fields` the command's prompt fields. Raises
        `GenerationGone` for a gone parent, `ConversationGone` for a gone conversation.
        """
        for message in messages:
            if message.get("role") not in ROLES or not isinstance(message.get("content"), str):
                raise ValueError(f"not a chat message: {message!r}")
        values = {
            "parent_id": parent_id,
            "conversation_id": conversation_id,
            "user_id": user_id,
            "guild_id": guild_id,
            "channel_id": channel_id,
            "message_id": message_id,
            "task": task,
            "fields_json": writes.encode_json(dict(fields or {})),
            "messages_json": writes.encode_json([dict(m) for m in messages]),
            "params_json": writes.encode_json(dict(params)),
            "model_id": model_id,
            "model_revision": model_revision,
            "created_utc": self._now(),
            "owner": self.instance.id,
        }
        return await self._write(writes.record_generation, values)

    async def finish_generation(
        self,
        generation_id: int,
        output: str,
        finish_reason: str,
        tokens_in: int,
        tokens_out: int,
        ttft_ms: float | None,
        total_ms: float,
        status: str = "done",
        error: str | None = None,
    ) -> None:
        """Store the result. `status`: done, failed, cancelled or interrupted."""
        if status not in FINISHED_STATUSES:
            raise ValueError(f"status must be one of {sorted(FINISHED_STATUSES)}, not {status!r}")
        values = dict(output=output, finish_reason=finish_reason, status=status, error=error)
        values.update(tokens_in=tokens_in, tokens_out=tokens_out, ttft_ms=ttft_ms)
        values.update(total_ms=total_ms, finished_utc=self._now())
        await self._write(writes.finish_generation, generation_id, values)

    async def set_message_id(self, generation_id: int, message_id: int) -> None:
        """Remember the Discord message showing the generation."""
        await self._write(writes.set_message_id, generation_id, message_id)

    async def set_followup_message_ids(self, generation_id: int, message_ids: list[int]) -> None:
        """Remember the follow-up messages a reply over 2,000 characters continues in."""
        await self._write(writes.set_followup_message_ids, generation_id, message_ids)

    async def mark_deleted(self, generation_id: int) -> None:
        """The reply was deleted (🗑): status `deleted`, never rated or exported again."""
        await self._write(writes.mark_deleted, generation_id, self._now())

    async def record_edit(
        self,
        original_id: int,
        user_id: int,
        text: str,
        *,
        guild_id: int | None,
        channel_id: int | None,
        message_id: int | None = None,
    ) -> int:
        """A member's corrected text of a generation (✏️); returns the edit's id.

        The edit is a finished generation (`source` "edit", status done) with the original as
        its parent, the editor as its user, and the original's prompt, fields, params and model.
        Raises `GenerationGone` for a missing or deleted original, `ValueError` for an empty
        text or one equal to the original's output (both after stripping whitespace).
        """
        if not text.strip():
            raise ValueError("an edit needs some text")
        values = dict(user_id=user_id, guild_id=guild_id, channel_id=channel_id, output=text)
        values.update(message_id=message_id, now=self._now())
        return await self._write(writes.record_edit, original_id, values)

    async def get_generation(self, generation_id: int) -> Generation | None:
        """Any generation by id (deleted included); None if missing or forgotten."""
        return await reads.get_generation(self._reader, generation_id)

    async def recent_generations(
        self, user_id: int, guild_id: int | None = None, limit: int = 10
    ) -> list[Generation]:
        """The user's newest generations (not deleted), newest first, optionally in one guild."""
        return await reads.recent_generations(self._reader, user_id, guild_id, limit)

    async def data_guild_ids(self) -> list[int]:
        """The guilds whose data the database holds (their generations), ascending; what
        `muse tune` checks before training one model on more than one guild's texts."""
        return await reads.data_guild_ids(self._reader)

    async def children(self, generation_id: int) -> list[Generation]:
        """Direct children (regenerations, continuations, edits), not deleted, oldest first."""
        return await reads.children(self._reader, generation_id)

    # --- ratings ---------------------------------------------------------------------

    async def record_feedback(
        self,
        generation_id: int,
        user_id: int,
        thumbs: Thumbs | None = None,
        stars: int | None = None,
        comment: str | None = None,
    ) -> FeedbackOutcome:
        """One rating action: thumbs OR stars (optionally with a comment), or a comment alone.

        The rater's latest thumbs/stars action decides their verdict. A comment of None keeps
        the previous one, "" clears it. Raises `GenerationGone` (deleted/forgotten/missing)
        and `ValueError` for a malformed action.
        """
        if thumbs is not None or stars is not None:
            verdict_of(thumbs, stars)  # validate here, in the caller's task
        elif comment is None:
            raise ValueError("a rating action needs thumbs, stars or a comment")
        return await self._write(
            writes.record_feedback, generation_id, user_id, thumbs, stars, comment, self._now()
        )

    async def record_comparison(
        self,
        prompt: str,
        generation_a: int,
        generation_b: int,
        user_id: int,
        winner: Winner,
        *,
        final: bool = False,
    ) -> Winner | None:
        """A /compare or /arena vote; one per user per pair. A second vote changes it, unless
        `final` (an arena vote, whose models were revealed to the voter): then the first vote
        stands and its winner is returned (None: this vote counted)."""
        if winner not in ("A", "B", "tie"):
            raise ValueError(f"winner must be 'A', 'B' or 'tie', not {winner!r}")
        if generation_a == generation_b:
            raise ValueError("a comparison needs two different generations")
        vote = (prompt, generation_a, generation_b, user_id, winner, self._now(), final)
        return await self._write(writes.record_comparison, *vote)

    # --- conversations ---------------------------------------------------------------

    async def create_conversation(
        self,
        thread_id: int,
        *,
        user_id: int,
        guild_id: int | None = None,
        channel_id: int | None = None,
    ) -> Conversation:
        """The conversation of a Discord thread, created if new (idempotent)."""
        return await self._write(
            writes.create_conversation, thread_id, user_id, guild_id, channel_id, self._now()
        )

    async def get_conversation(self, thread_id: int) -> Conversation | None:
        """The conversation bound to a Discord thread, if any."""
        return await reads.get_conversation(self._reader, thread_id)

    async def conversation_history(
        self,
        conversation_id: int,
        token_budget: int,
        count_tokens: Callable[[str], int] = approximate_tokens,
    ) -> list[dict[str, str]]:
        """Newest finished turns that fit `token_budget`, as chat messages, oldest first."""
        return await reads.conversation_history(
            self._reader, conversation_id, token_budget, count_tokens
        )

    # --- guilds and users ------------------------------------------------------------

    async def get_guild_settings(self, guild_id: int) -> GuildSettings:
        """The guild's /settings (None or empty = the bot's default)."""
        return await reads.get_guild_settings(self._reader, guild_id)

    async def update_guild_settings(self, guild_id: int, **changes: Any) -> GuildSettings:
        """Change some settings (a None value resets one); returns the new settings."""
        GuildSettings().updated(changes)  # validate in the caller's task
        return await self._write(writes.update_guild_settings, guild_id, changes, self._now())

    async def is_opted_out(self, user_id: int) -> bool:
        """Whether the user opted out of training exports."""
        return await reads.is_opted_out(self._reader, user_id)

    async def set_opted_out(self, user_id: int, opted_out: bool) -> None:
        """/privacy training:deny (True) or allow (False)."""
        await self._write(writes.set_opted_out, user_id, opted_out, self._now())

    async def mark_notice_shown(self, user_id: int) -> bool:
        """Record the first-use notice; True if this was the first time (show it)."""
        return await self._write(writes.mark_notice_shown, user_id, self._now())

    # --- statistics, retention, privacy, export --------------------------------------

    async def stats(self, guild_id: int | None = None) -> list[TaskModelStats]:
        """Per task and model: generations, ratings, 👍 share, ★ histogram, latency, tokens/s."""
        return await task_stats(self._reader, guild_id)

    async def arena_votes(
        self, guild_id: int | None = None, task: str | None = None
    ) -> list[ArenaVote]:
        """Comparisons of two different models' answers, for the leaderboard (see `arena`)."""
        return await arena.arena_votes(self._reader, guild_id, task)

    async def purge_older_than(self, days: float) -> dict[str, int] | None:
        """Retention: delete generations older than `days` (> 0): counts (None: purged elsewhere)"""
        if not days > 0:
            raise ValueError("days must be positive")
        cutoff = format_utc(self._clock() - timedelta(days=days))
        return await self._write(retention.purge_older_than, cutoff)

    async def forget_user(self, user_id: int) -> dict[str, int]:
        """/forget: delete every row about the user and retire every model their rows trained
        (see `storage.retention`); counts per table (`models`: retired)."""
        counts = await self._write(retention.forget_user, user_id, self._now())
        log.info("forgot a user: %s", counts)
        return counts

    async def models_trained_on(self, user_id: int) -> list[str]:
        """The live models a member's rows trained (what their `/forget` will retire)."""
        return await self._write(retention.models_trained_on, user_id)

    async def pseudonym(self, user_id: int) -> str:
        """A member's pseudonym in exports and in `ModelRecord.contributors`."""
        return await self._write(retention.pseudonym, user_id)

    async def export(
        self,
        fmt: str,
        out: TextIO,
        filters: ExportFilters | None = None,
        *,
        progress: bool = False,
    ) -> int:
        """Write an export (sft, dpo, kto, raw) as JSONL to `out`; returns the rows written.

        Runs in a worker thread on its own read-only connection: the bot keeps serving.
        """
        return await asyncio.to_thread(
            export_jsonl, self.path, fmt, out, filters or ExportFilters(), progress=progress
        )

    async def backup(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> int:
        """An online, consistent copy of the database at `path` (mode 0600); returns its size.

        SQLite's backup API on a separate read-only connection, in a worker thread: writes
        keep committing meanwhile. Raises `BackupError` for an existing `path` (unless
        `overwrite`) or a missing folder.
        """
        return await asyncio.to_thread(backup_file, self.path, Path(path), overwrite=overwrite)
