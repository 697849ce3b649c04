"""/chat: a conversation in a thread, with history; plain messages in a Muse thread too
(with `MUSE_MESSAGE_CONTENT=1`)."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.app import Muse
from bot.core.conversation import chat_plan
from bot.core.limits import Limited, Slot
from bot.core.plans import Plan
from bot.core.policy import Refused, Where, admit
from bot.core.run import first_use_notice, run
from bot.core.settle import Settled
from bot.core.surface import Shown
from bot.discord.admission import admitted
from bot.discord.buttons import VIEWS
from bot.discord.context import NO_MENTIONS, answer_ephemeral, app_of
from bot.discord.replies import Progress, final_pieces, progress_text, run_in_reply
from generation.errors import OptionError
from generation.types import GenerationChunk

log = logging.getLogger("muse.bot.discord.cogs.chat")

THREAD_NAME_LIMIT = 100
PLACEHOLDER = "⏳ writing… ▌"

NO_THREADS = (
    "🚫 Muse cannot open threads here: it needs the **Create Public Threads** and **Send "
    "Messages in Threads** permissions in this channel. Ask a moderator, or try another channel."
)
NO_SEND = "🚫 Muse cannot send messages in this thread (it needs **Send Messages in Threads**)."
NOT_MUSE = "Use `/chat` in a text channel to start a conversation, or in a Muse thread to go on."


def thread_name(message: str) -> str:
    """The thread's name: the message on one line, within Discord's 100 characters."""
    name = " ".join(message.split()) or "Chat with Muse"
    return name if len(name) <= THREAD_NAME_LIMIT else name[: THREAD_NAME_LIMIT - 1] + "…"


class ThreadReply:
    """`Surface` over a new message in a /chat thread (a turn that is not a command's reply)."""

    def __init__(
        self, app: Muse, thread: discord.Thread, reply_to: discord.Message | None = None
    ) -> None:
        self.thread = thread
        self.reply_to = reply_to
        self.message: discord.Message | None = None
        self._progress = Progress(app.edit_interval_s, f"thread {thread.id}")
        self._view: discord.ui.View | None = None
        self.kind = app.kind_of("chat")

    async def refuse(self, text: str) -> None:
        await self.thread.send(text, reference=self.reply_to, allowed_mentions=NO_MENTIONS)

    async def begin(self) -> int | None:
        self.message = await self.thread.send(
            PLACEHOLDER, reference=self.reply_to, allowed_mentions=NO_MENTIONS
        )
        return self.message.id

    def started(self, generation_id: int | None) -> None:
        if generation_id is not None:
            self._view = VIEWS.streaming(generation_id)

    def on_chunk(self, chunk: GenerationChunk) -> None:
        return None

    async def progress(self, latest: GenerationChunk | None, queued: int | None) -> None:
        assert self.message is not None
        kwargs = {"view": self._view} if self._view is not None else {}
        content, edit = progress_text(self.kind, latest, queued), self.message.edit
        if await self._progress.offer(
            content, lambda: edit(content=content, allowed_mentions=NO_MENTIONS, **kwargs)
        ):
            self._view = None

    async def show(self, settled: Settled) -> Shown:
        assert self.message is not None
        pieces = final_pieces(settled)
        view = (
            VIEWS.finished(settled.generation_id, settled.kind, settled.cut)
            if settled.rateable
            else None
        )
        await self.message.edit(content=pieces[0], view=view, allowed_mentions=NO_MENTIONS)
        sent = [await self.thread.send(p, allowed_mentions=NO_MENTIONS) for p in pieces[1:]]
        return Shown(self.message.id, [m.id for m in sent])

    async def fail(self, text: str) -> None:
        try:
            if self.message is not None:
                await self.message.edit(content=text, view=None, allowed_mentions=NO_MENTIONS)
            else:
                await self.thread.send(text, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException:
            log.warning("could not show a failure in thread %s", self.thread.id)

    async def notify(self, text: str) -> None:
        await self.thread.send(text, allowed_mentions=NO_MENTIONS)


async def answer_in_thread(
    app: Muse,
    thread: discord.Thread,
    plan: Plan,
    user_id: int,
    reply_to: discord.Message | None = None,
    slot: Slot | None = None,
) -> int | None:
    """Stream one turn into a new message of `thread`; returns the generation id. (A thread
    message cannot be private: the first-use notice is the caller's to show.)"""
    where = Where(user_id, thread.guild.id, thread.id, thread.parent_id)
    surface = ThreadReply(app, thread, reply_to)
    return await run(app, plan, where, surface, notice=False, slot=slot)


def can_open_thread(permissions: discord.Permissions) -> bool:
    return permissions.create_public_threads and permissions.send_messages_in_threads


class ChatCog(commands.Cog):
    """Conversations in threads."""

    def __init__(self, bot: commands.Bot) -> None:
        self.app = app_of(bot)

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.describe(message="What to say to Muse")
    async def chat(
        self, interaction: discord.Interaction, message: app_commands.Range[str, 1, 1000]
    ) -> None:
        """Talk with Muse in a thread; it remembers the conversation."""
        message = message.strip()
        if not message:
            await answer_ephemeral(interaction, "⚠️ Say something to Muse.")
        elif isinstance(interaction.channel, discord.Thread):
            await self.continue_in_thread(interaction, interaction.channel, message)
        else:
            await self.open_thread(interaction, message)

    async def open_thread(self, interaction: discord.Interaction, message: str) -> None:
        """A new thread named after the message; the answer streams into it."""
        if not can_open_thread(interaction.app_permissions):
            await answer_ephemeral(interaction, NO_THREADS)
            return
        async with admitted(interaction, "chat", [message]) as admission:
            if admission is None:
                return
            await interaction.response.send_message(
                f"💬 {message}"[:2000], allowed_mentions=NO_MENTIONS
            )
            try:
                starter = await interaction.original_response()
                thread = await starter.create_thread(name=thread_name(message))
            except discord.Forbidden:
                await interaction.edit_original_response(content=NO_THREADS)
                return
            conversation = await self.app.store.create_conversation(
                thread.id,
                user_id=interaction.user.id,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
            )
            plan = await chat_plan(
                self.app, interaction.user.id, message, conversation.id, admission
            )
            await answer_in_thread(
                self.app, thread, plan, interaction.user.id, None, admission.slot
            )
        notice = await first_use_notice(self.app, interaction.user.id)
        if notice is not None:
            await answer_ephemeral(interaction, notice)

    async def continue_in_thread(
        self, interaction: discord.Interaction, thread: discord.Thread, message: str
    ) -> None:
        """The next turn of the thread's conversation, as the command's reply."""
        conversation = await self.app.store.get_conversation(thread.id)
        if conversation is None:
            await answer_ephemeral(interaction, NOT_MUSE)
            return
        if not interaction.app_permissions.send_messages_in_threads:
            await answer_ephemeral(interaction, NO_SEND)
            return
        async with admitted(interaction, "chat", [message]) as admission:
            if admission is None:
                return
            try:
                plan = await chat_plan(
                    self.app, interaction.user.id, message, conversation.id, admission
                )
            except OptionError as exc:
                await answer_ephemeral(interaction, f"⚠️ {exc}")
                return
            await run_in_reply(interaction, plan, VIEWS, admission.slot)

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        """With `MUSE_MESSAGE_CONTENT=1`: a plain message in a Muse thread is the next turn."""
        if not self.app.settings.message_content or message.author.bot:
            return
        thread = message.channel
        if not isinstance(thread, discord.Thread) or not message.content.strip():
            return
        conversation = await self.app.store.get_conversation(thread.id)
        if conversation is None:
            return
        where = Where(message.author.id, thread.guild.id, thread.id, thread.parent_id)
        try:
            admission = await admit(self.app, "chat", where, [message.content])
        except (Refused, Limited) as exc:
            await message.reply(str(exc), delete_after=30, allowed_mentions=NO_MENTIONS)
            return
        try:
            plan = await chat_plan(
                self.app, message.author.id, message.content, conversation.id, admission
            )
            await answer_in_thread(
                self.app, thread, plan, message.author.id, message, admission.slot
            )
        finally:
            admission.slot.release()


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(ChatCog(bot))
