"""Remix culture: /remix, /info (recipe and family tree), /history, /delete."""

from __future__ import annotations

import re
from typing import Any, Self

import discord
from discord import app_commands
from discord.ext import commands

from bot.domain import UserError
from bot.ui import render, suggest
from bot.ui.client import EaselBot, easel
from bot.ui.errors import reply, report
from bot.ui.options import Option, build_command, prompt_options, recipe_options
from bot.ui.pager import page_button, page_count
from inference.request import aspect_size

PAGE_SIZE = 10


class HistoryPageButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"easel:history:(?P<user>\d+):(?P<page>\d+):(?P<dir>[pn])",
):
    """◀ / ▶ on a /history page; the custom_id carries whose history and which page."""

    def __init__(self, user_id: int, page: int, direction: str, *, disabled: bool = False):
        custom_id = f"easel:history:{user_id}:{page}:{direction}"
        super().__init__(page_button(direction, custom_id, disabled=disabled))
        self.user_id, self.page, self.direction = user_id, page, direction

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> Self:
        return cls(int(match["user"]), int(match["page"]), match["dir"])

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await show_history(interaction, self.user_id, self.page, edit=True)
        except Exception as error:
            await report(interaction, error)


async def show_history(
    interaction: discord.Interaction, user_id: int, page: int, *, edit: bool = False
) -> None:
    """One page of a member's history as others may see it (no refusals, no deleted ones)."""
    history = easel(interaction).repos.history
    guild_id = interaction.guild_id
    total = await history.count_history(user_id, guild_id=guild_id, visible_only=True)
    pages = page_count(total, PAGE_SIZE)
    if page > pages:
        raise UserError(f"There are only {pages} page(s) of history.")
    gens = await history.history(
        user_id,
        guild_id=guild_id,
        limit=PAGE_SIZE,
        offset=(page - 1) * PAGE_SIZE,
        visible_only=True,
    )
    embed = render.history_embed(
        gens, whose=_name(interaction, user_id), page=page, pages=pages, total=total
    )
    view = discord.ui.View(timeout=None)
    view.add_item(HistoryPageButton(user_id, page - 1, "p", disabled=page <= 1))
    view.add_item(HistoryPageButton(user_id, page + 1, "n", disabled=page >= pages))
    if edit:
        await interaction.response.edit_message(embed=embed, view=view)
    else:
        await reply(interaction, embed=embed, view=view)


def _name(interaction: discord.Interaction, user_id: int) -> str:
    guild = interaction.guild
    member = guild.get_member(user_id) if guild else None
    if member is not None:
        return member.display_name
    return "you" if user_id == interaction.user.id else f"<@{user_id}>"


class Lineage(commands.Cog):
    def __init__(self, bot: EaselBot):
        self.bot = bot
        g = bot.settings.generation
        generation = Option(
            "generation",
            app_commands.Range[int, 1],
            "The image's number (#N)",
            required=True,
            autocomplete=suggest.remixable,
        )
        prompt, negative = prompt_options(g)
        self.remix_command: app_commands.Command[Any, Any, None] = build_command(
            "remix",
            "Same seed and settings as an image, new prompt",
            [
                generation,
                Option(prompt.name, prompt.annotation, "The new prompt", required=True),
                Option(negative.name, negative.annotation, "A new negative prompt"),
                *recipe_options(g),
            ],
            self.remix,
        )
        bot.add_dynamic_items(HistoryPageButton)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.remix_command)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.remix_command.name)
        self.bot.remove_dynamic_items(HistoryPageButton)

    # --- /remix -------------------------------------------------------------------------

    async def remix(self, interaction: discord.Interaction, values: dict[str, Any]) -> None:
        gen_id = values.pop("generation")
        aspect = values.pop("aspect", None)
        if aspect is not None:
            native = self.bot.services.derive.native_size()
            values["width"], values["height"] = aspect_size(aspect, native)
        await self.bot.actions.remix(interaction, gen_id, **values)

    # --- /info --------------------------------------------------------------------------

    @app_commands.command(
        name="info", description="The full recipe of an image and its family tree"
    )
    @app_commands.describe(generation="The image's number (#N)")
    @app_commands.autocomplete(generation=suggest.informative)
    async def info(
        self, interaction: discord.Interaction, generation: app_commands.Range[int, 1]
    ) -> None:
        await self.bot.actions.info(interaction, generation)

    # --- /history -----------------------------------------------------------------------

    @app_commands.command(name="history", description="Recent images, newest first")
    @app_commands.describe(user="Whose images (default: yours)", page="Page number")
    async def history(
        self,
        interaction: discord.Interaction,
        user: discord.User | None = None,
        page: app_commands.Range[int, 1] = 1,
    ) -> None:
        await show_history(interaction, (user or interaction.user).id, page)

    # --- /delete ------------------------------------------------------------------------

    @app_commands.command(name="delete", description="Delete one of your images from the channel")
    @app_commands.describe(generation="The image's number (#N)")
    @app_commands.autocomplete(generation=suggest.deletable)
    async def delete(
        self, interaction: discord.Interaction, generation: app_commands.Range[int, 1]
    ) -> None:
        await self.bot.actions.delete(interaction, generation)


async def setup(bot: commands.Bot) -> None:
    assert isinstance(bot, EaselBot)
    await bot.add_cog(Lineage(bot))
