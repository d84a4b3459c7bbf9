"""A protocol-level fake Discord (REST, gateway, CDN) for end-to-end tests of a discord.py bot.

from tests.fakediscord import FakeDiscord, running_bot, fail_on_discord_errors

async with FakeDiscord() as fd:
    alice = fd.add_member("alice")
    with fail_on_discord_errors():
        async with running_bot(MyBot(), fd):
            handle = await fd.invoke(alice, "imagine", {"prompt": "a fox"})
            first = await handle.response()          # the initial callback
            msg = await handle.wait_for_message(lambda m: m.attachments)
"""

from .errors import ApiError
from .harness import (
    DiscordErrorWatcher,
    fail_on_discord_errors,
    point_discord_py_at,
    running_bot,
    start_bot,
    stop_bot,
)
from .markdown import Shown, bidi_trouble, render, visible
from .models import (
    EPHEMERAL,
    LOADING,
    CallbackRecord,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    Pings,
)
from .server import FakeDiscord
from .users import InteractionFailed, InteractionHandle

__all__ = [
    "EPHEMERAL",
    "LOADING",
    "ApiError",
    "CallbackRecord",
    "DiscordErrorWatcher",
    "FakeAttachment",
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeInteraction",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeUser",
    "InteractionFailed",
    "InteractionHandle",
    "Pings",
    "Shown",
    "bidi_trouble",
    "fail_on_discord_errors",
    "point_discord_py_at",
    "render",
    "running_bot",
    "start_bot",
    "stop_bot",
    "visible",
]
