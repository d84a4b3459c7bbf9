"""The moderators' review queue: flagged images and prompts refused for a banned word."""

from __future__ import annotations

from bot.domain import ReviewItem, ReviewState

from .database import Database, StoreError, required_datetime
from .generations import GenerationRepository

DECISIONS = (ReviewState.RELEASED, ReviewState.REMOVED)


def _guild(guild_id: int | None) -> tuple[str, list[int]]:
    return ("", []) if guild_id is None else ("AND g.guild_id = ?", [int(guild_id)])


class ReviewRepository:
    def __init__(self, db: Database, generations: GenerationRepository):
        self.db = db
        self.generations = generations

    async def queue(
        self, *, guild_id: int | None = None, limit: int = 20, offset: int = 0
    ) -> list[ReviewItem]:
        """Pending flagged images and prompts blocked for a banned word, oldest first (by
        generation id). Deleted generations are left out."""
        guild_clause, guild_params = _guild(guild_id)
        wanted = int(limit) + int(offset)
        # Each side reads its partial index in id order and stops early; merged here.
        image_rows = await self.db.all(
            f"""
            SELECT i.generation_id AS gen_id, i.idx AS idx,
                   COALESCE(g.finished_at, g.created_at) AS at
            FROM images AS i JOIN generations AS g ON g.id = i.generation_id
            WHERE i.review = 'pending' AND g.deleted_at IS NULL {guild_clause}
            ORDER BY i.generation_id, i.idx
            LIMIT ?
            """,
            [*guild_params, wanted],
        )
        prompt_rows = await self.db.all(
            f"""
            SELECT g.id AS gen_id, NULL AS idx, g.created_at AS at
            FROM generations AS g
            WHERE g.review = 'pending' AND g.deleted_at IS NULL {guild_clause}
            ORDER BY g.id
            LIMIT ?
            """,
            [*guild_params, wanted],
        )
        rows = sorted(
            [*image_rows, *prompt_rows],
            key=lambda r: (r["gen_id"], -1 if r["idx"] is None else r["idx"]),
        )[int(offset) : wanted]
        ids = list(dict.fromkeys(r["gen_id"] for r in rows))
        gens = {g.id: g for g in await self.generations.get_many(ids)}
        return [
            ReviewItem(
                generation=gens[r["gen_id"]], image_index=r["idx"], since=required_datetime(r["at"])
            )
            for r in rows
            if r["gen_id"] in gens
        ]

    async def count_pending(self, *, guild_id: int | None = None) -> int:
        guild_clause, params = _guild(guild_id)
        return await self.db.count(
            f"""
            SELECT
              (SELECT COUNT(*) FROM images AS i JOIN generations AS g ON g.id = i.generation_id
               WHERE i.review = 'pending' AND g.deleted_at IS NULL {guild_clause})
            + (SELECT COUNT(*) FROM generations AS g
               WHERE g.review = 'pending' AND g.deleted_at IS NULL {guild_clause})
            """,
            [*params, *params],
        )

    async def record(
        self,
        gen_id: int,
        image_index: int | None,
        decision: ReviewState,
        *,
        moderator_id: int,
    ) -> bool:
        """A moderator's decision on a flagged image (`image_index`) or a blocked prompt (None).

        Returns False if there is nothing to review there. A decision may be changed later.
        (The audit entry is the caller's.)
        """
        if decision not in DECISIONS:
            raise StoreError(f"A review decision is 'released' or 'removed', not {decision!r}.")
        now = self.db.now()
        if image_index is None:
            changed = await self.db.write(
                """
                UPDATE generations SET review = ?, reviewed_by = ?, reviewed_at = ?
                WHERE id = ? AND review IS NOT NULL
                """,
                (ReviewState(decision).value, int(moderator_id), now, int(gen_id)),
            )
        else:
            changed = await self.db.write(
                """
                UPDATE images SET review = ?, reviewed_by = ?, reviewed_at = ?
                WHERE generation_id = ? AND idx = ? AND flagged = 1
                """,
                (
                    ReviewState(decision).value,
                    int(moderator_id),
                    now,
                    int(gen_id),
                    int(image_index),
                ),
            )
        return bool(changed)
