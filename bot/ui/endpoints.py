"""Point discord.py at Discord or at any Discord-compatible server (DISCORD_API_BASE and
DISCORD_GATEWAY_URL). discord.py keeps both as class attributes; setting them is its own
supported way to change hosts (interaction callbacks and webhooks use the same REST base)."""

from __future__ import annotations

import discord.gateway
import discord.http
import yarl


def point_discord_py_at(api_base: str, gateway_url: str) -> None:
    discord.http.Route.BASE = api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
