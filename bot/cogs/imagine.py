"""/imagine: a prompt and options in, a job in the fair queue out; with `image`, the job
starts from the member's own picture (image-to-image)."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.domain import RefusalReason
from bot.settings import GenerationSettings
from bot.ui.client import EaselBot
from bot.ui.members import actor_of, origin_of
from bot.ui.options import Option, build_command, prompt_options, recipe_options
from inference.request import aspect_size

STRENGTH_WITHOUT_IMAGE = (
    "strength goes with an uploaded image: attach one with image, or leave strength out."
)


class Imagine(commands.Cog):
    def __init__(self, bot: EaselBot):
        self.bot = bot
        g = bot.settings.generation
        self.command: app_commands.Command[Any, Any, None] = build_command(
            "imagine",
            "Make images from a prompt",
            [*prompt_options(g), *recipe_options(g), *upload_options(g)],
            self.imagine,
        )

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.command)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.command.name)

    async def imagine(self, interaction: discord.Interaction, values: dict[str, Any]) -> None:
        attachment: discord.Attachment | None = values.pop("image", None)
        strength: float | None = values.pop("strength", None)
        aspect: str | None = values.pop("aspect", None)
        derive = self.bot.services.derive
        if attachment is not None:
            request = derive.new_request(
                **values,
                mode="img2img",
                strength=strength or self.bot.settings.generation.upload_strength,
                source="upload",
            )
            await self.bot.actions.imagine_from_upload(interaction, attachment, request, aspect)
            return
        width, height = aspect_size(aspect or "square", derive.native_size())
        request = derive.new_request(**values, width=width, height=height)
        if strength is not None:
            await self.bot.services.admission.refuse(
                request,
                origin_of(interaction),
                actor_of(interaction),
                RefusalReason.BAD_INPUT,
                STRENGTH_WITHOUT_IMAGE,
            )
        await self.bot.delivery.submit(interaction, request, origin_of(interaction))


def upload_options(g: GenerationSettings) -> list[Option]:
    """/imagine's own picture and how far to move away from it."""
    return [
        Option(
            "image",
            discord.Attachment,
            f"Start from your own picture: PNG, JPEG or WebP, up to {g.max_upload_mb:g} MB",
        ),
        Option(
            "strength",
            app_commands.Range[float, 0.05, 1.0],
            f"With image: how far to move away from it, 0.05–1 (default {g.upload_strength:g})",
        ),
    ]


async def setup(bot: commands.Bot) -> None:
    assert isinstance(bot, EaselBot)
    await bot.add_cog(Imagine(bot))
