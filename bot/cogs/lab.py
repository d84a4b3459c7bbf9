"""/lab: the diffusion lab's views of an image (steps, words, clip, noise) and experiment
grids. The 🔬 menu on every result does the same as the four views (bot/ui/buttons.py)."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.domain import Kind
from bot.ui.client import EaselBot
from bot.ui.members import origin_of
from bot.ui.options import Option, build_command, prompt_options, recipe_options
from inference.lab.spec import AXES
from inference.request import aspect_size

VIEWS = {
    "steps": "The denoising film: from noise to the image, step by step",
    "words": "What each word of the prompt painted (cross-attention maps)",
    "clip": "How well image and prompt match for CLIP, against LAION-5B's line",
    "noise": "The forward process: the image noised back to pure noise",
}


class Lab(commands.Cog):
    def __init__(self, bot: EaselBot):
        self.bot = bot
        g = bot.settings.generation
        self.group = app_commands.Group(
            name="lab", description="See how Stable Diffusion made an image, or run an experiment"
        )
        generation = Option(
            "generation", app_commands.Range[int, 1], "The image's number (#N)", required=True
        )
        image = Option(
            "image", app_commands.Range[int, 1, g.max_count], "Which image of it (default 1)"
        )
        for view, description in VIEWS.items():
            self.group.add_command(
                build_command(view, description, [generation, image], self._view_handler(view))
            )
        axes = ", ".join(AXES)
        prompt, negative = prompt_options(g)
        self.group.add_command(
            build_command(
                "grid",
                f"One picture that varies {axes} across columns (and rows)",
                [
                    prompt,
                    Option("axis", str, f"What varies across the columns: {axes}", required=True),
                    Option(
                        "values",
                        str,
                        "Its values, separated by commas (e.g. 1, 2, 3 or Euler a, DDIM)",
                        required=True,
                    ),
                    Option("axis2", str, f"What varies down the rows: {axes}"),
                    Option("values2", str, "The rows' values, separated by commas"),
                    negative,
                    *(o for o in recipe_options(g) if o.name != "count"),
                ],
                self.grid,
            )
        )

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.group)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.group.name)

    def _view_handler(self, view: str) -> Any:
        async def handler(interaction: discord.Interaction, values: dict[str, Any]) -> None:
            index = (values.get("image") or 1) - 1
            await self.bot.actions.lab(interaction, values["generation"], view, index)

        return handler

    async def grid(self, interaction: discord.Interaction, values: dict[str, Any]) -> None:
        aspect = values.pop("aspect", None) or "square"
        width, height = aspect_size(aspect, self.bot.services.derive.native_size())
        request = self.bot.services.lab.grid(
            values.pop("axis"),
            values.pop("values"),
            values.pop("axis2", None),
            values.pop("values2", None),
            **values,
            width=width,
            height=height,
        )
        await self.bot.delivery.submit(interaction, request, origin_of(interaction, Kind.LAB_GRID))


async def setup(bot: commands.Bot) -> None:
    assert isinstance(bot, EaselBot)
    await bot.add_cog(Lab(bot))
