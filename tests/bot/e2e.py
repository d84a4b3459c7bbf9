"""Running the real Easel bot against the fake Discord, with the tiny model in a real worker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from bot.__main__ import build_bot
from bot.db import Database, Repositories
from bot.settings import load_settings
from bot.ui.client import EaselBot
from inference.worker import Worker
from tests.fakediscord import FakeDiscord, running_bot


def easel_settings(fd: FakeDiscord, data_dir: Path, model: str, **env: str):
    environ = {
        "DISCORD_TOKEN": fd.token or "token",
        "DISCORD_GUILD_ID": str(fd.guild.id),
        "DISCORD_API_BASE": fd.api_base,
        "DISCORD_GATEWAY_URL": fd.gateway_url,
        "EASEL_MODEL": model,
        "EASEL_DEVICE": "cpu",
        "EASEL_DATA_DIR": str(data_dir),
        "EASEL_GENERATION_DEFAULT_STEPS": "4",
        "EASEL_DISCORD_PROGRESS_INTERVAL": "0.2",
        **env,
    }
    return load_settings(environ, env_file=None)


@contextlib.asynccontextmanager
async def running_easel(
    fd: FakeDiscord, worker: Worker, data_dir: Path, model: str, **env: str
) -> AsyncIterator[EaselBot]:
    """The bot as `python -m bot` builds it, but sharing an already started worker."""
    settings = easel_settings(fd, data_dir, model, **env)
    async with Database.open(settings.database_path) as db:
        bot = build_bot(settings, Repositories.on(db, images_dir=settings.images_dir), worker)
        async with running_bot(bot, fd):
            yield bot


def button(message, emoji_or_label: str) -> str:
    """The custom_id of the button with this label or emoji on a message."""
    for row in message.components:
        for component in row.get("components", []):
            emoji = (component.get("emoji") or {}).get("name")
            if component.get("label") == emoji_or_label or emoji == emoji_or_label:
                return component["custom_id"]
    raise LookupError(f"no button {emoji_or_label!r} on the message")


def status_id(message) -> int:
    """The generation id in a status line ("… **#12** …")."""
    return int(message.content.split("**#")[1].split("**")[0])


async def queued_id(handle, timeout: float = 20) -> int:
    """The id of the job an /imagine (or a button) queued, from its status line."""
    await handle.response()
    status = await handle.wait_for_message(lambda m: "**#" in (m.content or ""), timeout=timeout)
    return status_id(status)


async def result(fd: FakeDiscord, gen_id: int, timeout: float = 30):
    """The public result message of a generation, once it is posted."""
    return await fd.wait_for_message(
        lambda m: not m.ephemeral and any(e.get("title") == f"#{gen_id}" for e in m.embeds),
        timeout=timeout,
    )
