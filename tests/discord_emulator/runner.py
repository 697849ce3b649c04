"""Run a real discord.py client against the emulator, and always close it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import discord

    from .server import DiscordEmulator

ClientT = TypeVar("ClientT", bound="discord.Client")


@contextlib.asynccontextmanager
async def run_bot(
    bot: ClientT,
    emu: DiscordEmulator,
    *,
    ready_timeout: float = 15.0,
    fast_ready: bool = True,
) -> AsyncIterator[ClientT]:
    """Start ``bot`` against ``emu``, wait for ``on_ready``, yield it, then ``bot.close()``.

    ``fast_ready`` shortens discord.py's ``guild_ready_timeout`` (2 s of waiting for more
    GUILD_CREATEs before ``on_ready``) to 0.05 s: the emulator sends them all at once.
    """
    emu.configure_discord_py()
    if fast_ready:
        bot._connection.guild_ready_timeout = min(bot._connection.guild_ready_timeout, 0.05)
    task = asyncio.create_task(bot.start(emu.token), name="emulated-bot")
    ready = asyncio.create_task(bot.wait_until_ready())
    try:
        done, _ = await asyncio.wait(
            {task, ready}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            task.result()  # raises what start() raised
            raise RuntimeError("bot.start() returned before the bot was ready")
        if ready not in done:
            raise TimeoutError(f"bot not ready within {ready_timeout} s")
        yield bot
    finally:
        ready.cancel()
        await bot.close()
        try:
            await asyncio.wait_for(task, 5.0)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
        except Exception:  # noqa: BLE001 - start() errors were raised above already
            pass
