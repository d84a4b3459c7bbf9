"""Each server's banned words: seeded from the settings the first time Easel sees a server,
then the moderators' own list (/mod words)."""

from __future__ import annotations

from bot.db import Repositories
from bot.domain import SafetyMode
from bot.settings import ModerationSettings
from bot.wordfilter import find_banned
from inference.request import GenerationRequest


class WordLists:
    def __init__(self, repos: Repositories, settings: ModerationSettings):
        self.repos = repos
        self.settings = settings
        self._prepared: set[int] = set()  # servers whose word list and settings are seeded

    async def prepare_guild(self, guild_id: int) -> None:
        """The first time Easel sees a server, copy in the configured default banned words and
        safety mode; from then on the moderators' edits (/mod words, /mod safety) stick."""
        if guild_id in self._prepared:
            return
        seeded = await self.repos.words.seed(guild_id, self.settings.banned_words)
        if seeded and self.settings.safety_mode != SafetyMode.WITHHOLD:
            await self.repos.guilds.set_safety_mode(guild_id, self.settings.safety_mode)
        self._prepared.add(guild_id)

    async def of(self, guild_id: int | None) -> list[str]:
        """A server's banned words (the configured defaults outside a server)."""
        if guild_id is None:
            return list(self.settings.banned_words)
        await self.prepare_guild(guild_id)
        return await self.repos.words.of_guild(guild_id)

    async def banned_in(self, guild_id: int | None, request: GenerationRequest) -> str | None:
        """The first of the server's banned words in the prompt or negative prompt, or None."""
        return find_banned(f"{request.prompt}\n{request.negative}", await self.of(guild_id))
