"""Meta-test: every extension loads, and no two commands share a name."""

import importlib

import pytest

from bot.client import EXTENSIONS, EaselBot
from bot.settings import load_settings


class Placeholder:
    """Stands in for the store, worker and scheduler: loading touches none of them."""

    native_size = 512

    async def stop(self, **kwargs) -> None:
        pass


@pytest.mark.parametrize("name", EXTENSIONS)
def test_extension_module_has_setup(name):
    """Each listed extension exists and has an async setup(bot)."""
    module = importlib.import_module(name)
    assert callable(module.setup)


async def test_all_extensions_load_without_collisions():
    """All extensions load into one bot; command names are unique."""
    settings = load_settings({"DISCORD_TOKEN": "x"}, env_file=None)
    bot = EaselBot(settings, Placeholder(), Placeholder(), Placeholder())
    for name in EXTENSIONS:
        await bot.load_extension(name)
    names = [command.name for command in bot.tree.get_commands()]
    assert len(names) == len(set(names))
    assert {"imagine", "remix", "info", "history", "queue", "cancel", "delete", "mod"} <= set(names)
    await bot.close()
