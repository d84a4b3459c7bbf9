"""/mod: the moderators' commands (cog.py), the review queue and its buttons (review.py), and
how the log and audit pages look (pages.py)."""

from __future__ import annotations

from discord.ext import commands

from bot.ui.client import EaselBot

from .cog import Moderation


async def setup(bot: commands.Bot) -> None:
    assert isinstance(bot, EaselBot)
    await bot.add_cog(Moderation(bot))
