"""Who pressed or typed: a member of an interaction in the services' terms."""

from __future__ import annotations

import discord

from bot.domain import Actor, JobOrigin, Kind


def actor_of(interaction: discord.Interaction) -> Actor:
    return Actor(interaction.user.id, str(interaction.user), interaction.channel_id)


def origin_of(
    interaction: discord.Interaction,
    kind: Kind = Kind.IMAGINE,
    *,
    parent_id: int | None = None,
    parent_image_index: int | None = None,
) -> JobOrigin:
    """A new job asked for in this interaction (it belongs to whoever asked)."""
    return JobOrigin(
        user_id=interaction.user.id,
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id,
        kind=kind,
        parent_id=parent_id,
        parent_image_index=parent_image_index,
        user_name=interaction.user.display_name,
    )
