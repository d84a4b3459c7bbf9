"""Reading the prompt log: family trees, a member's history and the moderators' log."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from bot.domain import Generation, Status
from bot.wordfilter import normalise

from .database import Database, StoreError, to_timestamp
from .generations import VISIBLE, GenerationRepository


def _like(text: str) -> str:
    """A LIKE pattern that matches `text` anywhere (with `ESCAPE '\\'`)."""
    return "%" + re.sub(r"([\\%_])", r"\\\1", text) + "%"


def is_scan(contains: str | None, user_id: int | None) -> bool:
    """Whether a query reads much of the table: a text search over a server (or all of them).
    Within one member's rows (an index narrows them first) it does not."""
    return bool(contains) and user_id is None


def log_filter(
    guild_id: int | None = None,
    user_id: int | None = None,
    contains: str | None = None,
    status: Status | str | None = None,
    flagged: bool | None = None,
    since: datetime | float | None = None,
    until: datetime | float | None = None,
) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) of a moderators' log query."""
    clauses: list[str] = []
    params: list[Any] = []
    if guild_id is not None:
        clauses.append("guild_id = ?")
        params.append(int(guild_id))
    if user_id is not None:
        clauses.append("user_id = ?")
        params.append(int(user_id))
    if contains:
        # Disguised spellings match too: both sides are folded as the word filter folds.
        clauses.append(
            "(search_text LIKE ? ESCAPE '\\'"
            " OR (search_text IS NULL"
            " AND (prompt LIKE ? ESCAPE '\\' OR negative LIKE ? ESCAPE '\\')))"
        )
        params += [_like(normalise(contains)), _like(contains), _like(contains)]
    if status is not None:
        if status not in set(Status):
            known = ", ".join(s.value for s in Status)
            raise StoreError(f"Unknown status {status!r}; use one of: {known}.")
        clauses.append("status = ?")
        params.append(Status(status).value)
    if flagged is not None:
        clauses.append("flagged = 1" if flagged else "flagged = 0")
    if since is not None:
        clauses.append("created_at >= ?")
        params.append(to_timestamp(since))
    if until is not None:
        clauses.append("created_at < ?")
        params.append(to_timestamp(until))
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def _history_filter(
    user_id: int, guild_id: int | None, visible_only: bool
) -> tuple[str, list[Any]]:
    where = "WHERE user_id = ?"
    params: list[Any] = [int(user_id)]
    if guild_id is not None:
        where += " AND guild_id = ?"
        params.append(int(guild_id))
    if visible_only:
        where += f" AND {VISIBLE}"
    return where, params


class HistoryRepository:
    """Queries over the whole log (the generations table), newest first where it matters."""

    def __init__(self, db: Database, generations: GenerationRepository):
        self.db = db
        self.generations = generations

    async def children(self, gen_id: int) -> list[Generation]:
        """Direct children (rerolls, remixes, variations, upscales), oldest first."""
        return await self.generations.select("WHERE parent_id = ?", (int(gen_id),), "ORDER BY id")

    async def ancestors(self, gen_id: int, *, limit: int = 100) -> list[Generation]:
        """The parent chain: parent first, the root last (the generation itself left out)."""
        rows = await self.db.all(
            """
            WITH RECURSIVE chain(id, parent_id, depth) AS (
                SELECT id, parent_id, 0 FROM generations WHERE id = ?
                UNION ALL
                SELECT g.id, g.parent_id, chain.depth + 1
                FROM generations AS g JOIN chain ON g.id = chain.parent_id
                WHERE chain.depth < ?
            )
            SELECT id FROM chain WHERE depth > 0 ORDER BY depth
            """,
            (int(gen_id), int(limit)),
        )
        return await self.generations.get_many([row["id"] for row in rows])

    async def history(
        self,
        user_id: int,
        *,
        guild_id: int | None = None,
        limit: int = 10,
        offset: int = 0,
        visible_only: bool = False,
    ) -> list[Generation]:
        """A member's generations, newest first. Every status by default (the caller decides);
        `visible_only=True` leaves out refused requests (only their author ever saw those) and
        deleted results, for showing to other members."""
        where, params = _history_filter(user_id, guild_id, visible_only)
        return await self.generations.select(
            where,
            [*params, int(limit), int(offset)],
            "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
        )

    async def count_history(
        self, user_id: int, *, guild_id: int | None = None, visible_only: bool = False
    ) -> int:
        """How many rows `history` pages through (same filters)."""
        where, params = _history_filter(user_id, guild_id, visible_only)
        return await self.db.count(f"SELECT COUNT(*) FROM generations {where}", params)

    async def moderation_log(
        self,
        *,
        guild_id: int | None = None,
        user_id: int | None = None,
        contains: str | None = None,
        status: Status | str | None = None,
        flagged: bool | None = None,
        since: datetime | float | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> list[Generation]:
        """The prompt log for moderators, newest first, refusals included.

        `contains` matches the prompt or the negative prompt (case-insensitive for ASCII);
        `since` is an aware datetime (or Unix seconds).
        """
        where, params = log_filter(guild_id, user_id, contains, status, flagged, since)
        return await self.generations.select(
            where,
            [*params, int(limit), int(offset)],
            "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            scan=is_scan(contains, user_id),
        )

    async def count_log(
        self,
        *,
        guild_id: int | None = None,
        user_id: int | None = None,
        contains: str | None = None,
        status: Status | str | None = None,
        flagged: bool | None = None,
        since: datetime | float | None = None,
    ) -> int:
        where, params = log_filter(guild_id, user_id, contains, status, flagged, since)
        return await self.db.count(
            f"SELECT COUNT(*) FROM generations {where}", params, scan=is_scan(contains, user_id)
        )

    async def suggestions(
        self,
        *,
        guild_id: int | None,
        user_id: int | None = None,
        typed: str = "",
        statuses: tuple[Status, ...] = (),
        visible_only: bool = True,
        limit: int = 25,
    ) -> list[Generation]:
        """Generations to offer for a `generation` option, newest first: this server's (only
        `user_id`'s when given), with one of `statuses` (any when empty), and only the ones
        other members may see when `visible_only`. `typed` narrows them as the member types:
        digits (with or without `#`) match the start of the number, other text the prompt
        (folded as /mod log folds it)."""
        where, params = log_filter(user_id=user_id)
        clauses = [where.removeprefix("WHERE ")] if where else []
        if guild_id is None:
            clauses.append("guild_id IS NULL")
        else:
            clauses.append("guild_id = ?")
            params.append(int(guild_id))
        if statuses:
            clauses.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params += [Status(s).value for s in statuses]
        if visible_only:
            clauses.append(VISIBLE)
        text = typed.strip()
        number = text.removeprefix("#").strip()
        if number.isdecimal():
            clauses.append("CAST(id AS TEXT) LIKE ?")
            params.append(number + "%")
        elif text:
            contains, contains_params = log_filter(contains=text)
            clauses.append(contains.removeprefix("WHERE "))
            params += contains_params
        return await self.generations.select(
            "WHERE " + " AND ".join(clauses),
            [*params, int(limit)],
            "ORDER BY id DESC LIMIT ?",
            scan=is_scan(None if number.isdecimal() else text, user_id),
        )
