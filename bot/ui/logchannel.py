"""The moderators' log channel: one short line for every request, refusal, flag and moderator
action. Lines go out in the background, in order: a busy log channel hits Discord's rate limit,
and nobody's interaction may wait for it."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import discord

from bot.db import Repositories
from bot.domain import Actor
from bot.text import clip, literal

from .errors import NO_PINGS

log = logging.getLogger(__name__)

EVERY_SERVER = -1  # a queued line for every log channel, not one server's


class LogChannel:
    """`bot.services.modlog.ModLog` over Discord. Made before the client (the services need
    it), then attached to it."""

    def __init__(self, repos: Repositories, default_channel_id: int = 0):
        self.repos = repos
        self.default_channel_id = default_channel_id
        self._client: discord.Client | None = None
        self._lines: asyncio.Queue[tuple[int | None, str]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    def attach(self, client: discord.Client) -> None:
        self._client = client

    async def write(self, guild_id: int | None, text: str, actor: Actor | None = None) -> None:
        """Queue the line and return at once (it never waits for the database or Discord)."""
        if self._client is None:
            return
        who = ""
        if actor is not None:
            who = f"{literal(actor.name)} (`{actor.user_id}`)"
            if actor.channel_id:
                who += f" in <#{actor.channel_id}>"
            who += ": "
        self._lines.put_nowait((guild_id, clip(who + text, 1900)))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_lines(), name="easel-log")

    async def broadcast(self, text: str) -> None:
        """Queue one line for every server's log channel (a shared channel gets it once)."""
        if self._client is None:
            return
        self._lines.put_nowait((EVERY_SERVER, text[:1900]))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_lines(), name="easel-log")

    async def _channels_of(self, guild_id: int | None) -> set[int]:
        if guild_id != EVERY_SERVER:
            return {await self._channel_of(guild_id)} - {0}
        guilds = self._client.guilds if self._client is not None else []
        return {await self._channel_of(guild.id) for guild in guilds} - {0}

    async def _channel_of(self, guild_id: int | None) -> int:
        """The server's own log channel, else the configured one (0: none)."""
        if guild_id is not None:
            chosen = (await self.repos.guilds.settings(guild_id)).log_channel_id
            if chosen:
                return chosen
        return self.default_channel_id

    async def _write_lines(self) -> None:
        while True:
            guild_id, line = await self._lines.get()
            channel_id = 0
            try:
                for channel_id in sorted(await self._channels_of(guild_id)):
                    if self._client is None:
                        continue
                    channel = self._client.get_partial_messageable(channel_id)
                    try:
                        await channel.send(line, allowed_mentions=NO_PINGS)
                    except discord.HTTPException as error:
                        log.warning("Could not write to the log channel %s: %s", channel_id, error)
            except Exception:
                log.exception("Log line to %s failed", channel_id)
            finally:
                self._lines.task_done()

    async def close(self, *, grace: float = 3.0) -> None:
        """Give queued lines a moment to go out, then stop the writer."""
        if self._writer is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._lines.join(), grace)
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
