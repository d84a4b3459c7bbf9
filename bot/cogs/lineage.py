"""Remix culture: /remix, /info (recipe and family tree), /history, /delete."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.errors import UserError, reply
from bot.store import Generation
from inference.request import ASPECTS, aspect_size

if TYPE_CHECKING:
    from bot.client import EaselBot

PAGE_SIZE = 10


class HistoryPageButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=r"easel:history:(?P<user>\d+):(?P<page>\d+):(?P<dir>[pn])",
):
    """◀ / ▶ on a /history page; the custom_id carries whose history and which page."""

    def __init__(self, user_id: int, page: int, direction: str, *, disabled: bool = False):
        super().__init__(
            discord.ui.Button(
                label="◀ Newer" if direction == "p" else "Older ▶",
                disabled=disabled,
                style=discord.ButtonStyle.secondary,
                custom_id=f"easel:history:{user_id}:{page}:{direction}",
            )
        )
        self.user_id, self.page, self.direction = user_id, page, direction

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(int(match["user"]), int(match["page"]), match["dir"])

    async def callback(self, interaction: discord.Interaction) -> None:
        from bot.errors import report

        cog = interaction.client.get_cog("Lineage")
        try:
            await cog.show_history(interaction, self.user_id, self.page, edit=True)
        except Exception as error:
            await report(interaction, error)


class Lineage(commands.Cog):
    def __init__(self, bot: EaselBot):
        self.bot = bot
        bot.add_dynamic_items(HistoryPageButton)

    # --- /remix -------------------------------------------------------------------------

    @app_commands.command(
        name="remix", description="Same seed and settings as an image, new prompt"
    )
    @app_commands.describe(
        generation="The image's number (#N)",
        prompt="The new prompt",
        negative="A new negative prompt",
        steps="Override the steps",
        guidance="Override the guidance",
        sampler="Override the sampler",
        aspect="Override the shape",
        seed="Override the seed",
    )
    @app_commands.choices(aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS])
    async def remix(
        self,
        interaction: discord.Interaction,
        generation: app_commands.Range[int, 1],
        prompt: str,
        negative: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        aspect: str | None = None,
        seed: int | None = None,
    ) -> None:
        overrides = dict(
            prompt=prompt,
            negative=negative,
            steps=steps,
            guidance=guidance,
            sampler=sampler,
            seed=seed,
        )
        if aspect is not None:
            overrides["width"], overrides["height"] = aspect_size(aspect, self.bot.native_size)
        await self.bot.jobs.remix(interaction, generation, **overrides)

    @remix.autocomplete("sampler")
    async def _sampler_choices(self, interaction, current: str):
        return [
            app_commands.Choice(name=s, value=s)
            for s in self.bot.settings.generation.samplers
            if current.lower() in s.lower()
        ][:25]

    # --- /info --------------------------------------------------------------------------

    @app_commands.command(
        name="info", description="The full recipe of an image and its family tree"
    )
    @app_commands.describe(generation="The image's number (#N)")
    async def info(
        self, interaction: discord.Interaction, generation: app_commands.Range[int, 1]
    ) -> None:
        await self.send_info(interaction, generation)

    async def send_info(self, interaction: discord.Interaction, gen_id: int) -> None:
        store = self.bot.store
        gen = await self.bot.jobs.here(interaction, gen_id)
        if gen.status == "blocked" and not self._may_see_blocked(interaction, gen):
            raise UserError(f"There is no image #{gen_id}.")
        ancestors = await store.ancestors(gen_id)
        children = await store.children(gen_id)
        embed = render.recipe_embed(
            gen,
            ancestors[0] if ancestors else None,
            model=self.bot.settings.model.id,
            images=gen.images,
        )
        embed.title = f"#{gen.id} — {gen.kind}, {gen.status}"
        if gen.images:
            embed.add_field(
                name="Images",
                inline=False,
                value="\n".join(
                    f"{image.index + 1}: seed {image.seed}, {image.width}×{image.height}"
                    + ("" if image.public else " (withheld)")
                    for image in gen.images
                ),
            )
        link = render.jump_url(gen.guild_id, gen.message_channel_id, gen.message_id)
        if gen.deleted:
            embed.add_field(name="Message", value="deleted", inline=False)
        elif link:
            embed.add_field(name="Message", value=f"[jump to the result]({link})", inline=False)
        if ancestors:
            chain = " ← ".join(f"#{a.id} by <@{a.user_id}>" for a in ancestors[:10])
            if len(ancestors) > 10:
                chain += f" ← … ({len(ancestors) - 10} more)"
            embed.add_field(name="Made from", value=render.clip(chain, 1024), inline=False)
        if children:
            kids = ", ".join(f"#{c.id} {c.kind} by <@{c.user_id}>" for c in children[:20])
            if len(children) > 20:
                kids += f", … ({len(children) - 20} more)"
            embed.add_field(name="Remixed into", value=render.clip(kids, 1024), inline=False)
        request = gen.request
        embed.add_field(
            name="Reproduce",
            inline=False,
            value=render.clip(
                f"`/imagine prompt:{render.quote(request.prompt)} seed:{request.seed} "
                f"steps:{request.steps} guidance:{request.guidance:g} sampler:{request.sampler}`"
                + (f" at {request.width}×{request.height}" if request.mode == "txt2img" else "")
                + (" (and the same negative prompt)" if request.negative else ""),
                1024,
            ),
        )
        await reply(interaction, embed=render.fit_embed(embed))

    def _may_see_blocked(self, interaction: discord.Interaction, gen: Generation) -> bool:
        from bot.permissions import interaction_is_moderator

        return interaction_is_moderator(interaction, self.bot.settings.moderation)

    # --- /history -----------------------------------------------------------------------

    @app_commands.command(name="history", description="Recent images, newest first")
    @app_commands.describe(user="Whose images (default: yours)", page="Page number")
    async def history(
        self,
        interaction: discord.Interaction,
        user: discord.User | None = None,
        page: app_commands.Range[int, 1] = 1,
    ) -> None:
        await self.show_history(interaction, (user or interaction.user).id, page)

    async def show_history(
        self, interaction: discord.Interaction, user_id: int, page: int, *, edit: bool = False
    ) -> None:
        store = self.bot.store
        guild_id = interaction.guild_id
        total = await store.count_history(user_id, guild_id=guild_id, visible_only=True)
        pages = max(1, -(-total // PAGE_SIZE))
        if page > pages:
            raise UserError(f"There are only {pages} page(s) of history.")
        gens = await store.history(
            user_id,
            guild_id=guild_id,
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
            visible_only=True,
        )
        lines = []
        for gen in gens:
            link = render.jump_url(gen.guild_id, gen.message_channel_id, gen.message_id)
            prompt = render.clip(render.quote(gen.prompt), 70)
            stamp = discord.utils.format_dt(gen.created_at, "R")
            status = "" if gen.status == "done" else " " + render.STATUS_MARKS[gen.status]
            entry = f"**#{gen.id}** `{prompt}`{status} · {stamp}"
            if link and not gen.deleted:
                entry += f" · [open]({link})"
            lines.append(entry)
        embed = discord.Embed(
            title=f"History of {self._name(interaction, user_id)}",
            description="\n".join(lines) or "No images yet.",
            colour=render.EMBED_COLOUR,
        )
        embed.set_footer(text=f"Page {page} of {pages} · {total} in all")
        view = discord.ui.View(timeout=None)
        view.add_item(HistoryPageButton(user_id, page - 1, "p", disabled=page <= 1))
        view.add_item(HistoryPageButton(user_id, page + 1, "n", disabled=page >= pages))
        if edit:
            await interaction.response.edit_message(embed=embed, view=view)
        else:
            await reply(interaction, embed=embed, view=view)

    def _name(self, interaction: discord.Interaction, user_id: int) -> str:
        guild = interaction.guild
        member = guild.get_member(user_id) if guild else None
        if member is not None:
            return member.display_name
        return "you" if user_id == interaction.user.id else f"<@{user_id}>"

    # --- /delete ------------------------------------------------------------------------

    @app_commands.command(name="delete", description="Delete one of your images from the channel")
    @app_commands.describe(generation="The image's number (#N)")
    async def delete(
        self, interaction: discord.Interaction, generation: app_commands.Range[int, 1]
    ) -> None:
        await self.bot.jobs.delete(interaction, generation)


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Lineage(bot))
