"""What Muse's buttons do; `bot.views` routes each custom id here."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import discord

from bot import scenes
from bot.guild_policy import admitted, texts_of
from bot.modals import GONE, StarsModal
from bot.streaming import ActiveRun, answer_ephemeral, make_plan, run_generation
from generation.types import Message
from storage.errors import GenerationGone
from storage.models import Generation

if TYPE_CHECKING:
    from bot.client import MuseBot

log = logging.getLogger("muse.bot.actions")

NOT_YOURS = "Only the person who asked for this text, or a moderator, can {what} it."


def may_manage(interaction: discord.Interaction, owner_id: int) -> bool:
    """The requester, or a member with Manage Messages here."""
    perms = interaction.permissions
    return interaction.user.id == owner_id or perms.manage_messages or perms.administrator


async def stop(interaction: discord.Interaction[MuseBot], generation_id: int) -> None:
    """⏹: abort a generation that is still streaming."""
    run: ActiveRun | None = interaction.client.active.get(generation_id)
    if run is None:
        await answer_ephemeral(interaction, "That text has already finished.")
    elif not may_manage(interaction, run.user_id):
        await answer_ephemeral(interaction, NOT_YOURS.format(what="stop"))
    else:
        interaction.client.engine.abort(run.request_id)
        await answer_ephemeral(interaction, "⏹ Stopping.")


async def rate(interaction: discord.Interaction[MuseBot], generation_id: int, thumbs: str) -> None:
    """👍 / 👎: one vote per user, changeable."""
    try:
        await interaction.client.store.record_feedback(
            generation_id,
            interaction.user.id,
            thumbs="up" if thumbs == "up" else "down",
        )
    except GenerationGone:
        await answer_ephemeral(interaction, GONE)
        return
    await answer_ephemeral(interaction, f"Thanks — saved {'👍' if thumbs == 'up' else '👎'}")


async def open_stars(interaction: discord.Interaction[MuseBot], generation_id: int) -> None:
    """⭐: the stars modal."""
    await interaction.response.send_modal(StarsModal(generation_id))


async def _live(interaction: discord.Interaction[MuseBot], generation_id: int) -> Generation | None:
    """The generation if it can still be used; otherwise say so and return None."""
    generation = await interaction.client.store.get_generation(generation_id)
    if generation is None or generation.status == "deleted":
        await answer_ephemeral(interaction, "That text was deleted or forgotten.")
        return None
    return generation


async def regenerate(interaction: discord.Interaction[MuseBot], generation_id: int) -> None:
    """🔁: the same messages with a new seed, as a new reply that belongs to the presser."""
    parent = await _live(interaction, generation_id)
    if parent is None:
        return
    params = parent.params
    async with admitted(interaction, parent.task, texts_of(parent.fields)) as guild:
        if guild is None:
            return
        plan = make_plan(
            interaction.client,
            interaction.user.id,
            parent.task,
            parent.fields,
            parent_id=parent.id,
            guild=guild,
            temperature=params.get("temperature"),
            max_new_tokens=params.get("max_new_tokens"),
        )
        request = replace(
            plan.request,
            messages=tuple(Message(m["role"], m["content"]) for m in parent.messages),  # type: ignore[arg-type]
            response_prefix=str(params.get("response_prefix") or ""),
        )
        await run_generation(interaction, replace(plan, request=request))


async def continue_scene(
    interaction: discord.Interaction[MuseBot], generation_id: int, *, branch: bool
) -> None:
    """▶ (more lines) or 🔀 (an alternative next line) of a dialogue, linked to the parent."""
    parent = await _live(interaction, generation_id)
    if parent is None:
        return
    fields, messages, prefix = scenes.follow_up(parent, branch=branch)
    async with admitted(interaction, "dialogue", texts_of(fields)) as guild:
        if guild is None:
            return
        plan = make_plan(
            interaction.client, interaction.user.id, "dialogue", fields, parent.id, guild=guild
        )
        request = replace(plan.request, messages=messages, response_prefix=prefix)
        await run_generation(interaction, replace(plan, request=request))


async def script(interaction: discord.Interaction[MuseBot], generation_id: int) -> None:
    """📄: the scene as JSON and text attachments, ephemeral."""
    generation = await _live(interaction, generation_id)
    if generation is None:
        return
    as_json, as_text = scenes.script_files(generation)
    files = [
        discord.File(io.BytesIO(as_json.encode()), f"scene-{generation_id}.json"),
        discord.File(io.BytesIO(as_text.encode()), f"scene-{generation_id}.txt"),
    ]
    await answer_ephemeral(interaction, "📄 The scene as a script:", files=files)


async def delete(interaction: discord.Interaction[MuseBot], generation_id: int) -> None:
    """🗑: delete the reply and mark the generation deleted."""
    generation = await interaction.client.store.get_generation(generation_id)
    if generation is not None and not may_manage(interaction, generation.user_id):
        await answer_ephemeral(interaction, NOT_YOURS.format(what="delete"))
        return
    if interaction.message is not None:
        await interaction.message.delete()
    if generation is not None:
        await delete_followups(interaction, generation.followup_message_ids)
        await interaction.client.store.mark_deleted(generation_id)
    await answer_ephemeral(interaction, "🗑️ Deleted.")


async def delete_followups(interaction: discord.Interaction[MuseBot], ids: tuple[int, ...]) -> None:
    """The rest of a long reply; ones already gone (deleted by a moderator) are skipped."""
    channel = interaction.client.get_partial_messageable(interaction.channel_id or 0)
    for message_id in ids:
        with contextlib.suppress(discord.NotFound):
            await channel.get_partial_message(message_id).delete()


async def compare_vote(
    interaction: discord.Interaction[MuseBot], generation_a: int, generation_b: int, winner: str
) -> None:
    """A/B/tie on a /compare: one vote per user per pair, changeable."""
    store = interaction.client.store
    first = await store.get_generation(generation_a)
    prompt = scenes.main_prompt(interaction.client, first) if first else ""
    try:
        await store.record_comparison(
            prompt,
            generation_a,
            generation_b,
            interaction.user.id,
            "tie" if winner == "tie" else "A" if winner == "A" else "B",
        )
    except GenerationGone:
        await answer_ephemeral(interaction, "That comparison was deleted or forgotten.")
        return
    said = "a tie" if winner == "tie" else f"{winner} is better"
    await answer_ephemeral(interaction, f"Thanks — saved ({said})")
