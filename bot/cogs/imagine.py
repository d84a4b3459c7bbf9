"""/imagine: a prompt and options in, a job in the fair queue out."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.ui.client import EaselBot
from bot.ui.members import origin_of
from bot.ui.options import build_command, prompt_options, recipe_options
from inference.request import aspect_size


class Imagine(commands.Cog):
    def __init__(self, bot: EaselBot):
        self.bot = bot
        g = bot.settings.generation
        self.command: app_commands.Command[Any, Any, None] = build_command(
            "imagine",
            "Make images from a prompt",
            [*prompt_options(g), *recipe_options(g)],
            self.imagine,
        )

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.command)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.command.name)

    async def imagine(self, interaction: discord.Interaction, values: dict[str, Any]) -> None:
        aspect = values.pop("aspect", None) or "square"
        width, height = aspect_size(aspect, self.bot.services.derive.native_size())
        request = self.bot.services.derive.new_request(**values, width=width, height=height)
        await self.bot.delivery.submit(interaction, request, origin_of(interaction))


async def setup(bot: commands.Bot) -> None:
    assert isinstance(bot, EaselBot)
    await bot.add_cog(Imagine(bot))
