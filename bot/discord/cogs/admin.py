"""The guild's view and rules: /stats, /export and /settings (Manage Server), and retention."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.policy import Refused, out_of_range
from bot.core.settings_options import describe, parse_blocklist, parse_channels, parse_tasks
from bot.discord.context import NO_MENTIONS, answer_ephemeral, app_of
from generation.tasks.presets import TASKS
from storage.export import ExportFilters
from storage.stats import TaskModelStats, per_model, ratings_chart_png

log = logging.getLogger("muse.bot.discord.cogs.admin")

DEFAULT_UPLOAD_LIMIT = 25 * 1024 * 1024
DAY_S = 24 * 60 * 60
MANAGERS_ONLY = "🚫 Only members with **Manage Server** can use /{command}."
MAX_SCORE = 1_000_000  # /export min_score: far beyond any real score


def upload_limit(interaction: discord.Interaction) -> int:
    """The largest file Muse may attach here."""
    guild = interaction.guild
    return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT


def stats_lines(stats: Sequence[TaskModelStats]) -> str:
    """Per task (and model, when a task has several): generations, ratings, 👍 share, speed."""
    if not stats:
        return "No generations on this server yet."
    several = {s.task for s in stats if sum(t.task == s.task for t in stats) > 1}
    lines = ["**Muse on this server**"]
    for s in stats:
        name = f"/{s.task}" + (f" ({s.model_id})" if s.task in several else "")
        share = "–" if s.share_up is None else f"{s.share_up:.0%}"
        latency = "–" if s.mean_latency_ms is None else f"{s.mean_latency_ms / 1000:.1f} s"
        speed = "–" if s.tokens_per_s is None else f"{s.tokens_per_s:.1f} tok/s"
        edits = f" · ✏️ {s.edits} edits" if s.edits else ""
        lines.append(
            f"**{name}** — {s.generations} generations · {s.ratings} ratings · "
            f"👍 {share}{edits} · {latency} mean · {speed}"
        )
    models = per_model(stats)
    if len(models) > 1:  # the per-model view: which model this community rates higher
        lines.append("**Per model**")
        for m in models:
            good = "–" if m.share_good is None else f"{m.share_good:.0%}"
            lines.append(
                f"**{m.model_id}** — {m.generations} generations · {m.ratings} ratings · "
                f"good {good}"
            )
    return "\n".join(lines)


def export_command(fmt: str, guild_id: int, min_score: int | None) -> str:
    """The `muse export` line to run on the host for an export too big to upload."""
    score = f" --min-score {min_score}" if min_score is not None else ""
    return f"muse export --format {fmt} --guild {guild_id}{score} --out muse-{fmt}.jsonl"


def is_manager(interaction: discord.Interaction) -> bool:
    perms = interaction.permissions
    return perms.manage_guild or perms.administrator


class AdminCog(commands.Cog):
    """Statistics, exports, settings; the daily retention purge."""

    first_purge_s = 60.0  # the first purge runs shortly after start

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.app = app_of(bot)
        self.retention: asyncio.Task[None] | None = None

    async def cog_load(self) -> None:
        if self.app.settings.retention_days > 0:
            self.retention = asyncio.create_task(self.purge_daily(), name="muse-retention")

    async def cog_unload(self) -> None:
        if self.retention is not None:
            self.retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.retention

    async def purge_daily(self) -> None:
        """`MUSE_RETENTION_DAYS`: delete older generations, shortly after start, then daily."""
        days = self.app.settings.retention_days
        await asyncio.sleep(self.first_purge_s)
        while True:
            try:
                counts = await self.app.store.purge_older_than(days)
                if counts is None:
                    log.info("retention: another process is purging the database this round")
                else:
                    log.info("retention (%d days) purged %s", days, counts)
            except Exception:  # noqa: BLE001 - try again tomorrow
                log.exception("the retention purge failed")
            await asyncio.sleep(DAY_S)

    @app_commands.command()
    @app_commands.guild_only()
    async def stats(self, interaction: discord.Interaction) -> None:
        """This server's ratings per task, with a chart."""
        await interaction.response.defer(thinking=True)
        stats = await self.app.store.stats(interaction.guild_id)
        png = await asyncio.to_thread(ratings_chart_png, stats, "Ratings per task")
        await interaction.followup.send(
            stats_lines(stats),
            file=discord.File(io.BytesIO(png), "muse-stats.png"),
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.describe(format="The training format", min_score="The least score to include")
    async def export(
        self,
        interaction: discord.Interaction,
        format: Literal["sft", "dpo", "kto", "raw"],  # noqa: A002 - the option's name
        min_score: int | None = None,
    ) -> None:
        """This server's rated texts as JSONL training data (Manage Server)."""
        if not is_manager(interaction):
            await answer_ephemeral(interaction, MANAGERS_ONLY.format(command="export"))
            return
        if format not in ("sft", "dpo", "kto", "raw"):
            await answer_ephemeral(interaction, "⚠️ format must be sft, dpo, kto or raw.")
            return
        score_problem = out_of_range("min_score", min_score, -MAX_SCORE, MAX_SCORE)
        if min_score is not None and score_problem:  # past 64 bits SQLite refuses the query
            await answer_ephemeral(interaction, f"⚠️ {score_problem}")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id = interaction.guild_id or 0
        fd, path = tempfile.mkstemp(prefix="muse-export-", suffix=".jsonl")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                filters = ExportFilters(min_score=min_score, guild_id=guild_id)
                rows = await self.app.store.export(format, out, filters)
            await self.send_export(interaction, path, format, rows, min_score)
        finally:
            os.unlink(path)

    async def send_export(
        self,
        interaction: discord.Interaction,
        path: str,
        fmt: str,
        rows: int,
        min_score: int | None,
    ) -> None:
        """Attach the file, or say how to export on the host when it is too large."""
        size, guild_id = await asyncio.to_thread(os.path.getsize, path), interaction.guild_id or 0
        if size > upload_limit(interaction):
            command = export_command(fmt, guild_id, min_score)
            await interaction.followup.send(
                f"📦 The export ({rows} rows, {size / 2**20:.1f} MiB) is larger than Discord's "
                f"upload limit here. Run this on Muse's host instead:\n`{command}`",
                ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
            return
        await interaction.followup.send(
            f"📦 {rows} rows ({fmt}) from this server.",
            file=discord.File(path, f"muse-{guild_id}-{fmt}.jsonl"),
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.describe(
        temperature="Default randomness, 0.0–2.0",
        max_tokens="Default most tokens per text, 16–1024",
        per_user_per_minute="Texts a member may start per minute (0 = no limit)",
        enabled_tasks="Comma list, e.g. story, poem, chat (empty = all)",
        channels="Comma list of #channels (empty = all)",
        blocklist="Comma list of words or phrases (empty = none)",
        reset="Comma list of settings to put back to their defaults, or all",
    )
    async def settings(
        self,
        interaction: discord.Interaction,
        temperature: app_commands.Range[float, 0.0, 2.0] | None = None,
        max_tokens: app_commands.Range[int, 16, 1024] | None = None,
        per_user_per_minute: app_commands.Range[int, 0, 120] | None = None,
        enabled_tasks: str | None = None,
        channels: str | None = None,
        blocklist: str | None = None,
        reset: str | None = None,
    ) -> None:
        """Show or change Muse's rules for this server (Manage Server)."""
        if not is_manager(interaction):
            await answer_ephemeral(interaction, MANAGERS_ONLY.format(command="settings"))
            return
        options = {
            "temperature": temperature,
            "max_tokens": max_tokens,
            "per_user_per_minute": per_user_per_minute,
            "enabled_tasks": enabled_tasks,
            "channels": channels,
            "blocklist": blocklist,
            "reset": reset,
        }
        try:
            changes = settings_changes(options, tuple(self.app.presets))
            store, guild_id = self.app.store, interaction.guild_id or 0
            if changes:
                current = await store.update_guild_settings(guild_id, **changes)
            else:
                current = await store.get_guild_settings(guild_id)
        except (Refused, ValueError) as exc:
            await answer_ephemeral(interaction, f"⚠️ {exc}")
            return
        saved = "✅ Saved.\n" if changes else ""
        text = saved + describe(current, self.app.settings.user_per_minute)
        await answer_ephemeral(interaction, text)


def settings_changes(options: dict[str, Any], tasks: Sequence[str] = TASKS) -> dict[str, Any]:
    """The store's changes from /settings options (given ones only; `enabled_tasks` names
    `tasks`, the loaded presets'); raises `Refused`."""
    ranges = {"temperature": (0.0, 2.0), "max_tokens": (16, 1024), "per_user_per_minute": (0, 120)}
    changes: dict[str, Any] = {}
    for name, (low, high) in ranges.items():
        value = options.get(name)
        if value is not None:
            if problem := out_of_range(name, value, low, high):
                raise Refused(problem)
            changes[name] = value
    parsers = {
        "enabled_tasks": partial(parse_tasks, tasks=tasks),
        "channels": parse_channels,
        "blocklist": parse_blocklist,
    }
    for name, parse in parsers.items():
        raw = options.get(name)
        if raw is not None:
            changes[name] = parse(raw)
    for name in parse_reset(options.get("reset"), [*ranges, *parsers]):
        if name in changes:
            raise Refused(f"`{name}` is both set and reset: choose one.")
        changes[name] = None  # the store's "back to the default"
    return changes


def parse_reset(raw: str | None, names: list[str]) -> list[str]:
    """The settings named in /settings reset:… (`all`: every one); raises `Refused`."""
    wanted = [part.strip().lower() for part in (raw or "").split(",") if part.strip()]
    if "all" in wanted:
        return names
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise Refused(
            f"Cannot reset {', '.join(unknown)}: the settings are {', '.join(names)} (or all)."
        )
    return list(dict.fromkeys(wanted))


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(AdminCog(bot))
