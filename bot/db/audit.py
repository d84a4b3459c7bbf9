"""Every moderator action: who, what, on whom or what, why, when."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from bot.domain import AuditAction, AuditEntry

from .database import Database, required_datetime


def _action(value: str) -> AuditAction | str:
    try:
        return AuditAction(value)
    except ValueError:  # written by a newer Easel
        return value


def _entry(row: sqlite3.Row) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        guild_id=row["guild_id"],
        actor_id=row["actor_id"],
        action=_action(row["action"]),
        target_user_id=row["target_user_id"],
        target_generation_id=row["target_generation_id"],
        reason=row["reason"],
        details=json.loads(row["details"]) if row["details"] else {},
        created_at=required_datetime(row["created_at"]),
    )


class AuditRepository:
    def __init__(self, db: Database):
        self.db = db

    async def add(
        self,
        guild_id: int | None,
        actor_id: int,
        action: AuditAction,
        *,
        target_user_id: int | None = None,
        target_generation_id: int | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Record a moderator action."""
        entry_id = await self.db.insert(
            """
            INSERT INTO audit_log (guild_id, actor_id, action, target_user_id,
                                   target_generation_id, reason, details, created_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            """,
            (
                guild_id,
                int(actor_id),
                AuditAction(action).value,
                target_user_id,
                target_generation_id,
                reason,
                json.dumps(details, sort_keys=True, default=str) if details else None,
                self.db.now(),
            ),
        )
        row = await self.db.one("SELECT * FROM audit_log WHERE id = ?", (entry_id,))
        assert row is not None
        return _entry(row)

    async def entries(
        self,
        guild_id: int | None,
        *,
        action: AuditAction | str | None = None,
        actor_id: int | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> list[AuditEntry]:
        """A server's moderator actions, newest first."""
        sql = "SELECT * FROM audit_log WHERE guild_id IS ?"
        params: list[Any] = [guild_id]
        if action is not None:
            sql += " AND action = ?"
            params.append(str(action))
        if actor_id is not None:
            sql += " AND actor_id = ?"
            params.append(int(actor_id))
        rows = await self.db.all(
            sql + " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            [*params, int(limit), int(offset)],
        )
        return [_entry(row) for row in rows]
