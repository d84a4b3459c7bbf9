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
