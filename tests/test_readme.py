"""What the README promises about inviting the bot matches Discord's permission bits."""

from __future__ import annotations

import re
from pathlib import Path

import discord

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")

# The Developer Portal's names for the permissions, as discord.py's flags.
FLAGS = {
    "View Channels": "view_channel",
    "Send Messages": "send_messages",
    "Send Messages in Threads": "send_messages_in_threads",
    "Create Public Threads": "create_public_threads",
    "Embed Links": "embed_links",
    "Attach Files": "attach_files",
    "Read Message History": "read_message_history",
}


def test_invite_url_carries_exactly_the_listed_permissions():
    section = README.split("## Invite the bot", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"^   \| ([A-Z][A-Za-z ]+?) \| ", section, re.M)
    assert sorted(names) == sorted(FLAGS)
    expected = discord.Permissions(**{FLAGS[name]: True for name in names}).value
    (url,) = re.findall(r"https://discord\.com/oauth2/authorize\S+", section)
    assert url == (
        "https://discord.com/oauth2/authorize?client_id=YOUR_APP_ID"
        f"&scope=bot+applications.commands&permissions={expected}"
    )
    assert f"**{expected}**" in section
