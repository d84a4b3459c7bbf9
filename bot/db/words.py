"""Each server's banned words (stored folded, as the word filter folds them)."""

from __future__ import annotations

from collections.abc import Iterable

from .database import Database, StoreError


class WordRepository:
    def __init__(self, db: Database):
        self.db = db
        # Every request reads its server's list; this process is the only writer, so a copy
        # kept here (dropped on every change) stays true and saves a trip to the database.
        self._lists: dict[int, list[str]] = {}
        self._changes = 0  # a read that overlapped a change is not kept

    async def add(self, guild_id: int, word: str, *, by: int | None = None) -> bool:
        """Add a (normalised, by the caller) word to a server's list; False if already there."""
        word = word.strip()
        if not word:
            raise StoreError("A banned word cannot be empty.")
        changed = await self.db.write(
            """
            INSERT OR IGNORE INTO banned_words (guild_id, word, added_by, added_at)
            VALUES (?, ?, ?, ?)
            """,
            (int(guild_id), word, by, self.db.now()),
        )
        self._forget(guild_id)
        return bool(changed)

    async def remove(self, guild_id: int, word: str) -> bool:
        """Remove a word from a server's list; False if it was not there."""
        changed = await self.db.write(
            "DELETE FROM banned_words WHERE guild_id = ? AND word = ?",
            (int(guild_id), word.strip()),
        )
        self._forget(guild_id)
        return bool(changed)

    async def of_guild(self, guild_id: int) -> list[str]:
        """A server's banned words, sorted."""
        cached = self._lists.get(int(guild_id))
        if cached is None:
            changes = self._changes
            rows = await self.db.all(
                "SELECT word FROM banned_words WHERE guild_id = ? ORDER BY word", (int(guild_id),)
            )
            cached = [row["word"] for row in rows]
            if changes == self._changes:
                self._lists[int(guild_id)] = cached
        return list(cached)

    def _forget(self, guild_id: int) -> None:
        self._changes += 1
        self._lists.pop(int(guild_id), None)

    async def seed(self, guild_id: int, words: Iterable[str]) -> bool:
        """Copy the configured default words into a server's list once (the first time only, so
        a moderator's later removals stick). Returns True if it seeded now."""
        now = self.db.now()
        cleaned = [w.strip() for w in words if w.strip()]
        async with self.db.transaction() as conn:
            async with conn.execute(
                "SELECT words_seeded FROM guild_settings WHERE guild_id = ?", (int(guild_id),)
            ) as cursor:
                row = await cursor.fetchone()
            if row is not None and row["words_seeded"]:
                return False
            await conn.executemany(
                """
                INSERT OR IGNORE INTO banned_words (guild_id, word, added_by, added_at)
                VALUES (?, ?, NULL, ?)
                """,
                [(int(guild_id), word, now) for word in cleaned],
            )
            await conn.execute(
                """
                INSERT INTO guild_settings (guild_id, words_seeded, updated_at) VALUES (?, 1, ?)
                ON CONFLICT (guild_id) DO UPDATE
                SET words_seeded = 1, updated_at = excluded.updated_at
                """,
                (int(guild_id), now),
            )
        self._forget(guild_id)
        return True
