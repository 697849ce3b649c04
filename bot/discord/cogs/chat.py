"""/chat: a conversation in a thread, with history; plain messages in a Muse thread too
(with `MUSE_MESSAGE_CONTENT=1`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.conversation import answer_in_thread, chat_plan, thread_name
from bot.guild_policy import Refused, Where, admit, admitted
from bot.limits import Limited
from bot.streaming import NO_MENTIONS, answer_ephemeral, maybe_notice, run_generation
from generation.presets import PresetError

if TYPE_CHECKING:
    from bot.client import MuseBot

log = logging.getLogger("muse.bot.cogs.chat")

NO_THREADS = (
    "🚫 Muse cannot open threads here: it needs the **Create Public Threads** and **Send "
    "Messages in Threads** permissions in this channel. Ask a moderator, or try another channel."
)
NO_SEND = "🚫 Muse cannot send messages in this thread (it needs **Send Messages in Threads**)."
NOT_MUSE = "Use `/chat` in a text channel to start a conversation, or in a Muse thread to go on."


def can_open_thread(permissions: discord.Permissions) -> bool:
    return permissions.create_public_threads and permissions.send_messages_in_threads


class ChatCog(commands.Cog):
    """Conversations in threads."""

    def __init__(self, bot: MuseBot) -> None:
        self.bot = bot

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.describe(message="What to say to Muse")
    async def chat(
        self, interaction: discord.Interaction[MuseBot], message: app_commands.Range[str, 1, 1000]
    ) -> None:
        """Talk with Muse in a thread; it remembers the conversation."""
        message = message.strip()
        if not message:
            await answer_ephemeral(interaction, "⚠️ Say something to Muse.")
        elif isinstance(interaction.channel, discord.Thread):
            await self.continue_in_thread(interaction, interaction.channel, message)
        else:
            await self.open_thread(interaction, message)

    async def open_thread(self, interaction: discord.Interaction[MuseBot], message: str) -> None:
        """A new thread named after the message; the answer streams into it."""
        if not can_open_thread(interaction.app_permissions):
            await answer_ephemeral(interaction, NO_THREADS)
            return
        async with admitted(interaction, "chat", [message]) as guild:
            if guild is None:
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
            conversation = await self.bot.store.create_conversation(
                thread.id,
                user_id=interaction.user.id,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
            )
            plan = await chat_plan(self.bot, interaction.user.id, message, conversation.id, guild)
            await answer_in_thread(self.bot, thread, plan, interaction.user.id)
        await maybe_notice(interaction, self.bot)

    async def continue_in_thread(
        self, interaction: discord.Interaction[MuseBot], thread: discord.Thread, message: str
    ) -> None:
        """The next turn of the thread's conversation, as the command's reply."""
        conversation = await self.bot.store.get_conversation(thread.id)
        if conversation is None:
            await answer_ephemeral(interaction, NOT_MUSE)
            return
        if not interaction.app_permissions.send_messages_in_threads:
            await answer_ephemeral(interaction, NO_SEND)
            return
        async with admitted(interaction, "chat", [message]) as guild:
            if guild is None:
                return
            try:
                plan = await chat_plan(
                    self.bot, interaction.user.id, message, conversation.id, guild
                )
            except PresetError as exc:
                await answer_ephemeral(interaction, f"⚠️ {exc}")
                return
            await run_generation(interaction, plan)

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        """With `MUSE_MESSAGE_CONTENT=1`: a plain message in a Muse thread is the next turn."""
        if not self.bot.settings.message_content or message.author.bot:
            return
        thread = message.channel
        if not isinstance(thread, discord.Thread) or not message.content.strip():
            return
        conversation = await self.bot.store.get_conversation(thread.id)
        if conversation is None:
            return
        where = Where(message.author.id, thread.guild.id, thread.id, thread.parent_id)
        try:
            guild, slot = await admit(self.bot, "chat", where, [message.content])
        except (Refused, Limited) as exc:
            await message.reply(str(exc), delete_after=30, allowed_mentions=NO_MENTIONS)
            return
        try:
            plan = await chat_plan(
                self.bot, message.author.id, message.content, conversation.id, guild
            )
            await answer_in_thread(self.bot, thread, plan, message.author.id, reply_to=message)
        finally:
            slot.release()


async def setup(bot: MuseBot) -> None:
    await bot.add_cog(ChatCog(bot))
