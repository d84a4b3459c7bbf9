"""Fixtures the end-to-end cog tests share: a fake Discord that fails the test on any error
logged by discord.py, the fake or the bot, and the real bot on it (with the module's `worker`)."""

from __future__ import annotations

import pytest_asyncio

from tests.bot.e2e import running_easel
from tests.fakediscord import FakeDiscord, fail_on_discord_errors


@pytest_asyncio.fixture(loop_scope="module")
async def fd():
    async with FakeDiscord() as server:
        with fail_on_discord_errors("discord", "fakediscord", "bot"):
            yield server


@pytest_asyncio.fixture(loop_scope="module")
async def bot(fd, worker, tiny_model_dir, tmp_path):
    async with running_easel(fd, worker, tmp_path, tiny_model_dir) as running:
        yield running
