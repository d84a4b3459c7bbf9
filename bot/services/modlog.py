"""The moderators' log channel as the services see it: somewhere to write one short line.

`bot/ui/logchannel.py` implements it over Discord; tests may collect the lines in a list.
"""

from __future__ import annotations

from typing import Protocol

from bot.domain import Actor


class ModLog(Protocol):
    async def write(self, guild_id: int | None, text: str, actor: Actor | None = None) -> None:
        """One line (who did it, where, then `text`) in the server's log channel, if any."""

    async def broadcast(self, text: str) -> None:
        """One line in every log channel (each once): news of the bot itself, e.g. a worker."""


class NoModLog:
    """A log that writes nowhere."""

    async def write(self, guild_id: int | None, text: str, actor: Actor | None = None) -> None:
        return None

    async def broadcast(self, text: str) -> None:
        return None
