"""Who counts as a moderator: checked on the server side at every use, because
`default_member_permissions` only hides commands and a server admin can change it."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.services.moderation import Moderation
from bot.settings import ModerationSettings

from .members import actor_of

PERMISSION_NAMES = {
    "manage_messages": "Manage Messages",
    "manage_guild": "Manage Server",
    "moderate_members": "Timeout Members",
    "kick_members": "Kick Members",
    "ban_members": "Ban Members",
    "administrator": "Administrator",
}


class NotModerator(app_commands.CheckFailure):
    """A member without moderator rights used /mod or a review button."""


def interaction_is_moderator(
    interaction: discord.Interaction, settings: ModerationSettings
) -> bool:
    """Uses the permissions Discord resolved for this interaction's channel."""
    member = interaction.user
    if not isinstance(member, discord.Member):
        return False
    if settings.role_id and any(role.id == settings.role_id for role in member.roles):
        return True
    permissions = interaction.permissions
    return permissions.administrator or bool(getattr(permissions, settings.permission, False))


async def require_moderator(
    interaction: discord.Interaction, moderation: Moderation, what: str
) -> None:
    """Pass for a moderator; otherwise audit the attempt and raise `NotModerator`."""
    settings = moderation.settings.moderation
    if interaction.guild_id is not None and interaction_is_moderator(interaction, settings):
        return
    await moderation.denied(actor_of(interaction), interaction.guild_id, what)
    needs = f"the {PERMISSION_NAMES.get(settings.permission, settings.permission)} permission"
    if settings.role_id:
        needs += f" or the <@&{settings.role_id}> role"
    raise NotModerator(f"Only moderators can use this: it needs {needs}.")
