"""/imagine: a prompt and options in, a job in the fair queue out."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from inference.request import ASPECTS, MAX_SEED, aspect_size

if TYPE_CHECKING:
    from bot.client import EaselBot


def sampler_choices(bot: EaselBot) -> list[app_commands.Choice[str]]:
    return [app_commands.Choice(name=s, value=s) for s in bot.settings.generation.samplers]


class Imagine(commands.Cog):
    def __init__(self, bot: EaselBot):
        self.bot = bot
        g = bot.settings.generation
        # Bounds come from the settings, so Discord's own form enforces them too.
        command = app_commands.Command(
            name="imagine",
            description="Make images from a prompt",
            callback=self.imagine,
        )
        params = command._params
        # The bot validates again (with clearer words); these make Discord's form helpful.
        params["seed"].min_value, params["seed"].max_value = 0, MAX_SEED
        params["count"].min_value = 1
        params["steps"].min_value, params["steps"].max_value = g.min_steps, g.max_steps
        params["guidance"].min_value = g.min_guidance
        params["guidance"].max_value = g.max_guidance
        params["count"].max_value = g.max_count
        params["prompt"].max_length = min(g.max_prompt_chars, 6000)
        params["sampler"].choices = sampler_choices(bot)
        self.command = command

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.command)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.command.name)

    @app_commands.describe(
        prompt="What to draw",
        negative="What to keep out of the image",
        seed=f"0–{MAX_SEED}; the same seed and settings give the same image",
        steps="Denoising steps: more is slower and often finer",
        guidance="How closely to follow the prompt (CFG scale)",
        aspect="Shape of the image",
        count="How many images (each its own seed)",
        sampler="The sampling method",
    )
    @app_commands.choices(aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS])
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: str,
        negative: str | None = None,
        seed: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        aspect: str | None = None,
        count: int | None = None,
        sampler: str | None = None,
    ) -> None:
        width, height = aspect_size(aspect or "square", self.bot.native_size)
        request = self.bot.jobs.base_request(
            prompt=prompt,
            negative=negative,
            seed=seed,
            steps=steps,
            guidance=guidance,
            count=count,
            sampler=sampler,
            width=width,
            height=height,
        )
        await self.bot.jobs.submit(interaction, request, kind="imagine")


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Imagine(bot))
