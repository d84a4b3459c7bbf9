"""Meta-test: every extension loads, and no two commands share a name."""

import importlib

import pytest

from bot.services import Services
from bot.settings import load_settings
from bot.ui.client import EXTENSIONS, EaselBot
from bot.ui.logchannel import LogChannel


@pytest.mark.parametrize("name", EXTENSIONS)
def test_extension_module_has_setup(name):
    """Each listed extension exists and has an async setup(bot)."""
    module = importlib.import_module(name)
    assert callable(module.setup)


async def test_all_extensions_load_without_collisions(repos, make_scheduler):
    """All extensions load into one bot; command names are unique."""
    settings = load_settings({"DISCORD_TOKEN": "x"}, env_file=None)
    scheduler = await make_scheduler()
    log_channel = LogChannel(repos)
    services = Services.build(settings, repos, scheduler, log_channel, native_size=lambda: 512)
    bot = EaselBot(settings, repos, scheduler, services, log_channel)
    for name in EXTENSIONS:
        await bot.load_extension(name)
    names = [command.name for command in bot.tree.get_commands()]
    assert len(names) == len(set(names))
    assert {"imagine", "remix", "info", "history", "queue", "cancel", "delete", "mod"} <= set(names)
    await bot.close()
