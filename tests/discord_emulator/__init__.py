"""A Discord API emulator (REST + gateway on 127.0.0.1) for the real discord.py client.

Start it and a bot (``run_bot`` points discord.py here, waits for ``on_ready``, closes the bot)::

    async with DiscordEmulator(users={"alice": 0, "mod": MANAGE_MESSAGES}) as emu:
        async with run_bot(MuseBot(...), emu) as bot:
            story = await emu.slash_command("story", {"prompt": "a dragon"}, user="alice")
            await story.wait_finished()          # answered, not "thinking…", quiet for 0.3 s
            assert story.callback_type == 5 and story.original.content
            vote = await emu.press_button(story.original, "muse:rate:1:up", user="mod")
            modal = await emu.slash_command("rate")  # a command answering with a modal
            await emu.submit_modal(modal, {"stars": "4"})
            await emu.send_message(emu.threads()[0], "hello", user="alice")

Faults: ``emu.faults.rate_limit(every=3)`` (429 on every 3rd PATCH), ``fail_next(429)``,
``server_error(fraction=0.1)`` (seeded), ``delay(0.2)``; gateway: ``await emu.drop_gateway()``
(resumable close), ``request_reconnect()``, ``invalidate_session()``. Everything waits with
``await emu.wait_for(predicate)``, which re-checks on every change instead of sleeping.
"""

from .faults import FaultRule, Faults
from .gateway import GatewayEvent
from .interactions import InteractionRecord
from .messages import EPHEMERAL, LOADING, Attachment, MessageRecord, MessageVersion
from .models import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    EVERYONE_PERMISSIONS,
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    Channel,
    Guild,
    Member,
    Role,
    User,
)
from .runner import run_bot
from .server import DEFAULT_USERS, DiscordEmulator
from .state import RequestLog

__all__ = [
    "ADMINISTRATOR",
    "ALL_PERMISSIONS",
    "DEFAULT_USERS",
    "EPHEMERAL",
    "EVERYONE_PERMISSIONS",
    "LOADING",
    "MANAGE_GUILD",
    "MANAGE_MESSAGES",
    "Attachment",
    "Channel",
    "DiscordEmulator",
    "FaultRule",
    "Faults",
    "GatewayEvent",
    "Guild",
    "InteractionRecord",
    "Member",
    "MessageRecord",
    "MessageVersion",
    "RequestLog",
    "Role",
    "User",
    "run_bot",
]
