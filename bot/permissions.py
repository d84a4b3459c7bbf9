"""Who counts as a moderator: checked on the server side at every use, because
`default_member_permissions` only hides commands and a server admin can change it."""

from __future__ import annotations

import discord

from .settings import ModerationSettings


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
