"""Bans per server; the history is kept (a lifted ban has `lifted_at`)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from typing import Any

from bot.domain import Ban

from .database import Database, StoreError, required_datetime, to_datetime, to_timestamp

# The one definition of a ban in force at time `?`.
ACTIVE = "lifted_at IS NULL AND (until IS NULL OR until > ?)"


def _ban(row: sqlite3.Row) -> Ban:
    return Ban(
        id=row["id"],
        guild_id=row["guild_id"],
        user_id=row["user_id"],
        reason=row["reason"],
        banned_by=row["banned_by"],
        created_at=required_datetime(row["created_at"]),
        until=to_datetime(row["until"]),
        lifted_at=to_datetime(row["lifted_at"]),
        lifted_by=row["lifted_by"],
    )


class BanRepository:
    def __init__(self, db: Database):
        self.db = db

    async def ban(
        self,
        guild_id: int,
        user_id: int,
        *,
        by: int,
        reason: str = "",
        until: datetime | None = None,
        duration: timedelta | None = None,
    ) -> Ban:
        """Ban a member from making images in a server until `until` (or for `duration`;
        neither = permanent). A new ban replaces the member's active one."""
        now = self.db.now()
        if until is not None and duration is not None:
            raise StoreError("Give a ban either an end time or a duration, not both.")
        end = to_timestamp(until) if until is not None else None
        if duration is not None:
            end = now + duration.total_seconds()
        if end is not None and end <= now:
            raise StoreError("A ban must end in the future.")
        async with self.db.transaction() as conn:
            await conn.execute(
                f"""
                UPDATE bans SET lifted_at = ?, lifted_by = ?
                WHERE guild_id = ? AND user_id = ? AND {ACTIVE}
                """,
                (now, int(by), int(guild_id), int(user_id), now),
            )
            async with conn.execute(
                """
                INSERT INTO bans (guild_id, user_id, reason, banned_by, created_at, until)
                VALUES (?, ?, ?, ?, ?, ?)
                """,
                (int(guild_id), int(user_id), reason or "", int(by), now, end),
            ) as cursor:
                ban_id = cursor.lastrowid
        row = await self.db.one("SELECT * FROM bans WHERE id = ?", (ban_id,))
        assert row is not None
        return _ban(row)

    async def active(self, guild_id: int, user_id: int) -> Ban | None:
        """The member's ban in force now (expired and lifted bans do not count), or None."""
        row = await self.db.one(
            f"""
            SELECT * FROM bans
            WHERE guild_id = ? AND user_id = ? AND {ACTIVE}
            ORDER BY created_at DESC, id DESC LIMIT 1
            """,
            (int(guild_id), int(user_id), self.db.now()),
        )
        return None if row is None else _ban(row)

    async def unban(self, guild_id: int, user_id: int, *, by: int) -> bool:
        """Lift the member's active ban; False if there was none."""
        now = self.db.now()
        changed = await self.db.write(
            f"""
            UPDATE bans SET lifted_at = ?, lifted_by = ?
            WHERE guild_id = ? AND user_id = ? AND {ACTIVE}
            """,
            (now, int(by), int(guild_id), int(user_id), now),
        )
        return bool(changed)

    async def of_guild(self, guild_id: int, *, active_only: bool = True) -> list[Ban]:
        """A server's bans, newest first (only those in force unless `active_only=False`)."""
        sql = "SELECT * FROM bans WHERE guild_id = ?"
        params: list[Any] = [int(guild_id)]
        if active_only:
            sql += f" AND {ACTIVE}"
            params.append(self.db.now())
        rows = await self.db.all(sql + " ORDER BY created_at DESC, id DESC", params)
        return [_ban(row) for row in rows]
