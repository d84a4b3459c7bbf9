"""Per-server settings, and the few global values that must survive a restart."""

from __future__ import annotations

from bot.domain import GuildSettings, SafetyMode

from .database import Database, StoreError, to_datetime

PAUSED_KEY = "queue.paused"
LOAD_SECONDS_KEY = "load_seconds:{model}"


class GuildRepository:
    def __init__(self, db: Database):
        self.db = db

    async def settings(self, guild_id: int) -> GuildSettings:
        """A server's settings (defaults when none were saved)."""
        row = await self.db.one("SELECT * FROM guild_settings WHERE guild_id = ?", (int(guild_id),))
        if row is None:
            return GuildSettings(guild_id=int(guild_id))
        return GuildSettings(
            guild_id=row["guild_id"],
            safety_mode=SafetyMode(row["safety_mode"]),
            log_channel_id=row["log_channel_id"],
            words_seeded=bool(row["words_seeded"]),
            updated_at=to_datetime(row["updated_at"]),
        )

    async def set_safety_mode(self, guild_id: int, mode: SafetyMode | str) -> GuildSettings:
        """`withhold` (flagged images only in review) or `spoiler` (posted behind a spoiler)."""
        if mode not in set(SafetyMode):
            raise StoreError(f"The safety mode is 'withhold' or 'spoiler', not {mode!r}.")
        await self.db.write(
            """
            INSERT INTO guild_settings (guild_id, safety_mode, updated_at) VALUES (?, ?, ?)
            ON CONFLICT (guild_id) DO UPDATE
            SET safety_mode = excluded.safety_mode, updated_at = excluded.updated_at
            """,
            (int(guild_id), SafetyMode(mode).value, self.db.now()),
        )
        return await self.settings(guild_id)

    async def set_log_channel(self, guild_id: int, channel_id: int | None) -> GuildSettings:
        """The moderators' log channel of a server (None = none)."""
        await self.db.write(
            """
            INSERT INTO guild_settings (guild_id, log_channel_id, updated_at) VALUES (?, ?, ?)
            ON CONFLICT (guild_id) DO UPDATE
            SET log_channel_id = excluded.log_channel_id, updated_at = excluded.updated_at
            """,
            (int(guild_id), channel_id, self.db.now()),
        )
        return await self.settings(guild_id)


class StateRepository:
    """Small global values (`bot_state`), e.g. whether the queue is paused."""

    def __init__(self, db: Database):
        self.db = db

    async def get(self, key: str, default: str | None = None) -> str | None:
        row = await self.db.one("SELECT value FROM bot_state WHERE key = ?", (key,))
        return default if row is None else str(row["value"])

    async def set(self, key: str, value: str | None) -> None:
        """Set (or with None, delete) a global value."""
        if value is None:
            await self.db.write("DELETE FROM bot_state WHERE key = ?", (key,))
        else:
            await self.db.write(
                """
                INSERT INTO bot_state (key, value) VALUES (?, ?)
                ON CONFLICT (key) DO UPDATE SET value = excluded.value
                """,
                (key, str(value)),
            )

    async def paused(self) -> bool:
        return await self.get(PAUSED_KEY) == "1"

    async def set_paused(self, paused: bool) -> None:
        await self.set(PAUSED_KEY, "1" if paused else None)

    async def load_seconds(self, model: str) -> float | None:
        """How long loading `model` took last time (for "the model is loading, about N s")."""
        value = await self.get(LOAD_SECONDS_KEY.format(model=model))
        try:
            return None if value is None else float(value)
        except ValueError:
            return None

    async def set_load_seconds(self, model: str, seconds: float) -> None:
        await self.set(LOAD_SECONDS_KEY.format(model=model), f"{seconds:.1f}")
