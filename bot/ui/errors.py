"""One error handler for the command tree, and one way to answer an interaction.

Each known error becomes one ephemeral sentence; anything else is logged with a traceback
and the member gets a short apology with an error id to quote to a moderator.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

import discord
from discord import app_commands

from bot.db import DiskFullError
from bot.domain import UserError
from inference.request import RequestError

log = logging.getLogger(__name__)

# What members hear while nothing can be saved (moderators get a line in their log channel).
DISK_FULL = "The server's disk is full; try again later."

# Whatever a prompt says, a message never pings @everyone, @here or a role.
NO_PINGS = discord.AllowedMentions(everyone=False, roles=False, users=False, replied_user=False)


def allow_user_ping(user: discord.abc.Snowflake) -> discord.AllowedMentions:
    """Mentions that ping exactly one member (the author of a result)."""
    return discord.AllowedMentions(everyone=False, roles=False, users=[user], replied_user=False)


async def reply(
    interaction: discord.Interaction,
    content: str | None = None,
    *,
    ephemeral: bool = True,
    **kwargs: Any,
) -> discord.Message | None:
    """Answer by the response, a followup, or (token expired) a channel message."""
    kwargs.setdefault("allowed_mentions", NO_PINGS)
    if content is not None and len(content) > 2000:  # Discord's limit; errors can echo input
        content = content[:1999] + "…"
    if not interaction.response.is_done():
        await interaction.response.send_message(content, ephemeral=ephemeral, **kwargs)
        return None
    if not interaction.is_expired():
        # discord.py's overloads cannot see through **kwargs; with wait=True it is a Message.
        message: discord.Message = await interaction.followup.send(  # type: ignore[call-overload]
            content, ephemeral=ephemeral, wait=True, **kwargs
        )
        return message
    channel = interaction.channel
    if ephemeral or not isinstance(channel, discord.abc.Messageable):
        return None  # nobody left to tell privately: the interaction is gone
    return await channel.send(content, **kwargs)


def describe(error: BaseException) -> str | None:
    """The sentence for a known error, or None for a bug."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, UserError | RequestError):
        return str(error)
    if isinstance(error, DiskFullError):
        return DISK_FULL
    if isinstance(error, app_commands.CheckFailure) and str(error):
        return str(error)
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down: try again in {error.retry_after:.0f} s."
    if isinstance(error, app_commands.TransformerError):
        return f"{error.value!r} is not a valid value here."
    return None


async def report(interaction: discord.Interaction, error: BaseException) -> None:
    """Tell the member what went wrong; log what they cannot fix."""
    message = describe(error)
    if message is None:
        error_id = secrets.token_hex(4)
        original = getattr(error, "original", error)
        log.error(
            "Error %s in %s by %s",
            error_id,
            _where(interaction),
            interaction.user.id,
            exc_info=(type(original), original, original.__traceback__),
        )
        message = f"Sorry, something went wrong on our side (error id `{error_id}`)."
    try:
        await reply(interaction, message)
    except discord.HTTPException:
        log.warning("Could not tell %s about an error", interaction.user.id)


def _where(interaction: discord.Interaction) -> str:
    if interaction.command is not None:
        return f"/{interaction.command.qualified_name}"
    data: Mapping[str, Any] = interaction.data or {}
    return str(data.get("custom_id", "an interaction"))


class EaselTree(app_commands.CommandTree):
    """The command tree with one error handler for every slash command."""

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await report(interaction, error)
