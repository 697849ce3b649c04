"""pytest fixtures; register with ``pytest_plugins = ["tests.discord_emulator.fixtures"]``.

Or write the three lines in a test module: ``async with DiscordEmulator() as emu: yield emu``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .server import DiscordEmulator


@pytest.fixture
async def discord_emulator() -> AsyncIterator[DiscordEmulator]:
    """A started emulator: one guild, ``#general``, owner, alice, bob, manager, moderator."""
    async with DiscordEmulator() as emu:
        yield emu
