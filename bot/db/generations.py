"""The prompt log: one row per request, accepted or refused, and the queue's durable state.

A job is `queued`, `running`, `done`, `failed`, `cancelled` or `blocked` (refused); every state
change is written here before the scheduler acts on it, so a crash loses nothing.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bot.domain import (
    Generation,
    ImageRow,
    JobOrigin,
    Kind,
    RefusalReason,
    ReviewState,
    Status,
    StatusLine,
)
from bot.wordfilter import normalise
from inference.request import GenerationRequest, GenerationResult

from .database import (
    Database,
    StoreError,
    chunks,
    marks,
    required_datetime,
    to_datetime,
    to_timestamp,
)
from .images import ImageFiles
from .lab import insert as insert_lab
from .lab import prepare as prepare_lab

log = logging.getLogger(__name__)

GEN_COLUMNS = """
    id, user_id, user_name, guild_id, channel_id, kind, parent_id, parent_image_index, recipe,
    status, refusal_reason, refusal_message, error, flagged, prompt_truncated, runs, attempts,
    batch_size, created_at, queued_at, started_at, finished_at, inference_seconds, timings,
    message_channel_id, message_id, delivered_at, deleted_at, deleted_by, review, reviewed_by,
    reviewed_at, status_channel_id, status_message_id, upload
"""

# What others may see of a member's log: not refused requests, not deleted results.
VISIBLE = "status != 'blocked' AND deleted_at IS NULL"


def _review(value: str | None) -> ReviewState | None:
    return None if value is None else ReviewState(value)


def generation_from_row(row: sqlite3.Row, images: Sequence[ImageRow] = ()) -> Generation:
    status_line = None
    if row["status_channel_id"] is not None and row["status_message_id"] is not None:
        status_line = StatusLine(row["status_channel_id"], row["status_message_id"])
    return Generation(
        id=row["id"],
        user_id=row["user_id"],
        user_name=row["user_name"],
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        kind=Kind(row["kind"]),
        parent_id=row["parent_id"],
        parent_image_index=row["parent_image_index"],
        recipe=json.loads(row["recipe"]),
        status=Status(row["status"]),
        refusal_reason=None
        if row["refusal_reason"] is None
        else RefusalReason(row["refusal_reason"]),
        refusal_message=row["refusal_message"],
        error=row["error"],
        flagged=bool(row["flagged"]),
        prompt_truncated=bool(row["prompt_truncated"]),
        runs=row["runs"],
        attempts=row["attempts"],
        batch_size=row["batch_size"],
        created_at=required_datetime(row["created_at"]),
        queued_at=to_datetime(row["queued_at"]),
        started_at=to_datetime(row["started_at"]),
        finished_at=to_datetime(row["finished_at"]),
        inference_seconds=row["inference_seconds"],
        timings=json.loads(row["timings"]) if row["timings"] else {},
        message_channel_id=row["message_channel_id"],
        message_id=row["message_id"],
        delivered_at=to_datetime(row["delivered_at"]),
        deleted_at=to_datetime(row["deleted_at"]),
        deleted_by=row["deleted_by"],
        review=_review(row["review"]),
        reviewed_by=row["reviewed_by"],
        reviewed_at=to_datetime(row["reviewed_at"]),
        status_line=status_line,
        images=tuple(images),
        upload=row["upload"],
    )


class GenerationRepository:
    """Rows of the `generations` table (and, through `files`, their images)."""

    def __init__(self, db: Database, files: ImageFiles):
        self.db = db
        self.files = files

    # -- reading -------------------------------------------------------------------------------

    async def select(
        self, where: str, params: Sequence[Any] = (), tail: str = "", *, scan: bool = False
    ) -> list[Generation]:
        """Generations (with their images) matching a WHERE clause; `scan` for a search that
        reads much of the table (it waits for the scan reader, see `Database`)."""
        rows = await self.db.all(
            f"SELECT {GEN_COLUMNS} FROM generations {where} {tail}", params, scan=scan
        )
        if not rows:
            return []
        images = await self.files.of([row["id"] for row in rows])
        return [generation_from_row(row, images.get(row["id"], ())) for row in rows]

    async def get(self, gen_id: int) -> Generation | None:
        """One generation with its images, or None."""
        rows = await self.select("WHERE id = ?", (int(gen_id),))
        return rows[0] if rows else None

    async def require(self, gen_id: int) -> Generation:
        gen = await self.get(gen_id)
        if gen is None:
            raise StoreError(f"Generation #{gen_id} does not exist.")
        return gen

    async def exists(self, gen_id: int) -> bool:
        return await self.db.one("SELECT 1 FROM generations WHERE id = ?", (gen_id,)) is not None

    async def get_many(self, gen_ids: Sequence[int]) -> list[Generation]:
        """Several generations, in the order of `gen_ids` (unknown ids are left out)."""
        ids = [int(i) for i in gen_ids]
        found: dict[int, Generation] = {}
        for chunk in chunks(ids):
            for gen in await self.select(f"WHERE id IN ({marks(chunk)})", chunk):
                found[gen.id] = gen
        return [found[i] for i in ids if i in found]

    async def jobs_to_recover(self) -> list[Generation]:
        """Jobs left `queued` or `running` (e.g. by a crash), in the order they were accepted."""
        return await self.select("WHERE status IN ('queued', 'running')", (), "ORDER BY id")

    async def undelivered(
        self, *, since: datetime | float | None = None, limit: int = 100
    ) -> list[Generation]:
        """Finished (`done` or `failed`) jobs whose result was never posted, oldest first."""
        where = "WHERE status IN ('done', 'failed') AND delivered_at IS NULL AND deleted_at IS NULL"
        params: list[Any] = []
        if since is not None:
            where += " AND finished_at >= ?"
            params.append(to_timestamp(since))
        return await self.select(where, [*params, int(limit)], "ORDER BY id LIMIT ?")

    async def count_today(self, user_id: int, *, now: datetime | float | None = None) -> int:
        """Requests a member made since 00:00 UTC today that count against the daily quota.

        Refused, failed, and cancelled-before-starting requests do not count.
        """
        stamp = to_timestamp(now)
        moment = required_datetime(self.db.now() if stamp is None else stamp)
        midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return await self.db.count(
            """
            SELECT COUNT(*) FROM generations
            WHERE user_id = ? AND created_at >= ?
              AND status IN ('queued', 'running', 'done', 'cancelled')
              AND NOT (status = 'cancelled' AND started_at IS NULL)
            """,
            (int(user_id), midnight.timestamp()),
        )

    # -- creating ------------------------------------------------------------------------------

    async def _insert(
        self,
        request: GenerationRequest,
        origin: JobOrigin,
        *,
        status: Status,
        refusal_reason: RefusalReason | None = None,
        refusal_message: str | None = None,
        review: ReviewState | None = None,
        keep_parent: bool = True,
    ) -> Generation:
        """Write the row and return it as written (a new generation has no images yet)."""
        try:
            kind = Kind(origin.kind)
        except ValueError:
            known = ", ".join(Kind)
            raise StoreError(
                f"Unknown generation kind {origin.kind!r}; use one of: {known}."
            ) from None
        now = self.db.now()
        parent_id, parent_index = origin.parent_id, origin.parent_image_index
        if not keep_parent:
            parent_id = parent_index = None
        try:
            row = await self.db.insert_returning(
                f"""
                INSERT INTO generations (
                    user_id, user_name, guild_id, channel_id, kind, parent_id,
                    parent_image_index, prompt, negative, recipe, status, refusal_reason,
                    refusal_message, review, created_at, queued_at, search_text
                ) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                RETURNING {GEN_COLUMNS}
                """,
                (
                    int(origin.user_id),
                    origin.user_name,
                    origin.guild_id,
                    origin.channel_id,
                    kind.value,
                    parent_id,
                    parent_index,
                    str(request.prompt or ""),
                    str(request.negative or ""),
                    request.to_json(),
                    status.value,
                    None if refusal_reason is None else refusal_reason.value,
                    refusal_message,
                    None if review is None else review.value,
                    now,
                    now if status is Status.QUEUED else None,
                    normalise(f"{request.prompt or ''}\n{request.negative or ''}"),
                ),
            )
        except sqlite3.IntegrityError as error:
            if parent_id is not None and "FOREIGN KEY" in str(error).upper():
                raise StoreError(f"Generation #{parent_id} does not exist.") from None
            raise
        return generation_from_row(row)

    async def create(self, request: GenerationRequest, origin: JobOrigin) -> Generation:
        """Log an accepted request as `queued` and return it (its id is the job id).

        The seed is fixed here if the request has none, so the log always holds a reproducible
        recipe. The request's source image (vary/upscale) is not stored: the source is
        `parent_id` + `parent_image_index`, whose file is on disk.
        """
        return await self._insert(request.with_seed(), origin, status=Status.QUEUED)

    async def log_refusal(
        self,
        request: GenerationRequest,
        origin: JobOrigin,
        *,
        reason: RefusalReason,
        message: str,
        review: bool | None = None,
    ) -> Generation:
        """Log a refused request (status `blocked`) with its reason and the sentence shown.

        A prompt blocked for a banned word goes to the moderators' review queue (override with
        `review=`). A parent that does not exist is kept out of the row (the refusal is still
        logged).
        """
        try:
            reason = RefusalReason(reason)
        except ValueError:
            known = ", ".join(RefusalReason)
            raise StoreError(f"Unknown refusal reason {reason!r}; use one of: {known}.") from None
        if review is None:
            review = reason.needs_review
        keep_parent = origin.parent_id is None or await self.exists(origin.parent_id)
        return await self._insert(
            request,
            origin,
            status=Status.BLOCKED,
            refusal_reason=reason,
            refusal_message=message,
            review=ReviewState.PENDING if review else None,
            keep_parent=keep_parent,
        )

    # -- status transitions --------------------------------------------------------------------

    async def mark_running(self, gen_ids: Sequence[int]) -> list[Generation]:
        """`queued` → `running` (stamps started_at, counts the run). Returns the rows changed.

        Called before the batch is handed to the worker, so a crash leaves them `running`,
        and `jobs_to_recover` queues them again.
        """
        if not gen_ids:
            return []
        now = self.db.now()
        changed: list[int] = []
        async with self.db.transaction() as conn:
            for gen_id in gen_ids:
                async with conn.execute(
                    """
                    UPDATE generations
                    SET status = 'running', started_at = ?, runs = runs + 1
                    WHERE id = ? AND status = 'queued'
                    """,
                    (now, int(gen_id)),
                ) as cursor:
                    if cursor.rowcount:
                        changed.append(int(gen_id))
        return await self.get_many(changed)

    async def requeue(self, gen_ids: Sequence[int]) -> int:
        """`running` → `queued` (recovery after a crash or a stop mid-batch)."""
        count = 0
        async with self.db.transaction() as conn:
            for gen_id in gen_ids:
                async with conn.execute(
                    "UPDATE generations SET status = 'queued' WHERE id = ? AND status = 'running'",
                    (int(gen_id),),
                ) as cursor:
                    count += cursor.rowcount
        return count

    async def save_result(self, gen_id: int, result: GenerationResult) -> Generation | None:
        """Record the worker's result: image files, image rows and the final status at once.

        The status becomes `cancelled` (result.cancelled), `failed` (result.error) or `done`.
        Flagged images are kept unredacted and put in the review queue. Only a `queued` or
        `running` job can finish: for a job already final this writes nothing and returns None,
        so no job ever ends twice.
        """
        gen_id = int(gen_id)
        row = await self.db.one("SELECT status FROM generations WHERE id = ?", (gen_id,))
        if row is None:
            raise StoreError(f"Generation #{gen_id} does not exist.")
        if not Status(row["status"]).is_active:
            log.warning("Result for #%d ignored: it is already %s", gen_id, row["status"])
            return None
        if result.cancelled:
            status, error = Status.CANCELLED, result.error
        elif result.error is not None:
            status, error = Status.FAILED, result.error
        else:
            status, error = Status.DONE, None
        images = [] if status is Status.CANCELLED else list(result.images)
        # Files first (atomic renames); the rows that point at them commit afterwards.
        for image in images:
            await self.files.write(gen_id, image)
        lab_row = (
            None if status is Status.CANCELLED else await prepare_lab(self.files, gen_id, result)
        )
        now = self.db.now()
        timings = {k: float(v) for k, v in (result.timings or {}).items()}
        flagged = any(image.nsfw for image in images)
        async with self.db.transaction() as conn:
            async with conn.execute(
                """
                UPDATE generations
                SET status = ?, error = ?, flagged = ?, prompt_truncated = ?, attempts = ?,
                    batch_size = ?, finished_at = ?, inference_seconds = ?, timings = ?
                WHERE id = ? AND status IN ('queued', 'running')
                """,
                (
                    status.value,
                    error,
                    int(flagged),
                    int(bool(result.prompt_truncated)),
                    result.attempts,
                    result.batch_size,
                    now,
                    timings.get("inference"),
                    json.dumps(timings, sort_keys=True),
                    gen_id,
                ),
            ) as cursor:
                if not cursor.rowcount:
                    return None
            await conn.executemany(
                """
                INSERT OR REPLACE INTO images
                    (generation_id, idx, seed, file, width, height, flagged, review)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """,
                [
                    (
                        gen_id,
                        int(image.index),
                        int(image.seed),
                        self.files.path(gen_id, image.index).name,
                        int(image.width),
                        int(image.height),
                        int(bool(image.nsfw)),
                        ReviewState.PENDING.value if image.nsfw else None,
                    )
                    for image in images
                ],
            )
            if lab_row is not None:  # what the lab found, with the result it belongs to
                await insert_lab(conn, lab_row)
        return await self.get(gen_id)

    async def mark_cancelled(self, gen_id: int) -> Generation | None:
        """A queued (or running) job cancelled by its author or a moderator."""
        return await self.save_result(gen_id, GenerationResult(job_id=str(gen_id), cancelled=True))

    async def mark_failed(self, gen_id: int, error: str) -> Generation | None:
        """A job that cannot run; `error` is the sentence its author will see."""
        return await self.save_result(gen_id, GenerationResult(job_id=str(gen_id), error=error))

    async def mark_delivered(
        self, gen_id: int, *, channel_id: int | None, message_id: int | None
    ) -> bool:
        """The result was posted: remember where, so a restart does not post it again."""
        changed = await self.db.write(
            """
            UPDATE generations
            SET message_channel_id = ?, message_id = ?, delivered_at = ?
            WHERE id = ?
            """,
            (channel_id, message_id, self.db.now(), int(gen_id)),
        )
        return bool(changed)

    async def mark_deleted(self, gen_id: int, *, by: int) -> bool:
        """Soft delete: the result is gone from the channel, the log keeps it. False if unknown
        or already deleted."""
        changed = await self.db.write(
            """
            UPDATE generations SET deleted_at = ?, deleted_by = ?
            WHERE id = ? AND deleted_at IS NULL
            """,
            (self.db.now(), int(by), int(gen_id)),
        )
        return bool(changed)

    async def attach_upload(self, gen_id: int, png: bytes, *, flagged: bool = False) -> Generation:
        """Keep the image a member uploaded with request #`gen_id` (already re-encoded): the
        file first, named by the id, then the row that names it (and whether the safety
        checker flagged it)."""
        name = await self.files.write_upload(gen_id, png)
        await self.db.write(
            "UPDATE generations SET upload = ?, flagged = MAX(flagged, ?) WHERE id = ?",
            (name, int(flagged), int(gen_id)),
        )
        return await self.require(gen_id)

    # -- status lines --------------------------------------------------------------------------

    async def set_status_line(self, gen_id: int, line: StatusLine | None) -> None:
        """Where the job's public status line is (None: it is gone)."""
        await self.db.write(
            "UPDATE generations SET status_channel_id = ?, status_message_id = ? WHERE id = ?",
            (
                None if line is None else line.channel_id,
                None if line is None else line.message_id,
                int(gen_id),
            ),
        )

    async def status_line(self, gen_id: int) -> StatusLine | None:
        row = await self.db.one(
            "SELECT status_channel_id, status_message_id FROM generations WHERE id = ?",
            (int(gen_id),),
        )
        if row is None or row[0] is None or row[1] is None:
            return None
        return StatusLine(int(row[0]), int(row[1]))
