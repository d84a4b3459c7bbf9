"""The SQLite data layer: the prompt log, the durable queue state, images, moderation tables.

One `Store` owns one aiosqlite connection (the single writer) to `<data>/easel.sqlite3` in WAL
mode with `busy_timeout` and foreign keys on. The schema lives in numbered files
`bot/migrations/NNN_name.sql`, applied in one transaction; the version is `PRAGMA user_version`.
A database newer than this code is refused with `SchemaTooNewError`.

Images are files `<images_dir>/<generation id>_<index>.png` (never named by user input); the
store writes them together with their rows (`save_result`). Times are UTC: stored as Unix
seconds, returned as aware `datetime`s. Nothing here imports discord or torch.

    async with Store.open(settings.database_path) as store:
        gen = await store.create_generation(request, user_id=…, guild_id=…, channel_id=…)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from inference.request import GenerationRequest, GenerationResult

from .wordfilter import normalise

log = logging.getLogger(__name__)

Kind = Literal["imagine", "reroll", "remix", "vary", "upscale"]
Status = Literal["queued", "running", "done", "failed", "cancelled", "blocked"]
ReviewState = Literal["pending", "released", "removed"]
SafetyMode = Literal["withhold", "spoiler"]

KINDS: tuple[str, ...] = ("imagine", "reroll", "remix", "vary", "upscale")
STATUSES: tuple[str, ...] = ("queued", "running", "done", "failed", "cancelled", "blocked")
ACTIVE_STATUSES: frozenset[str] = frozenset({"queued", "running"})
FINAL_STATUSES: frozenset[str] = frozenset({"done", "failed", "cancelled", "blocked"})
# Why a request was refused (generations.refusal_reason when status = 'blocked').
REFUSAL_REASONS: tuple[str, ...] = (
    "bad_input",
    "banned_word",
    "banned_user",
    "over_cap",
    "over_quota",
    "paused",
)
REVIEW_DECISIONS: tuple[str, ...] = ("released", "removed")
SAFETY_MODES: tuple[str, ...] = ("withhold", "spoiler")

# The recipe's fields, as exported (one column each).
RECIPE_COLUMNS: tuple[str, ...] = (
    "prompt",
    "negative",
    "seed",
    "steps",
    "guidance",
    "width",
    "height",
    "count",
    "sampler",
    "mode",
    "strength",
    "model",
)

# Columns of `export_rows` / `iter_export`, in CSV order.
EXPORT_COLUMNS: tuple[str, ...] = (
    "generation_id",
    "image_index",
    "created_at",
    "user_id",
    "user_name",
    "guild_id",
    "channel_id",
    "kind",
    "parent_id",
    "parent_image_index",
    "status",
    "refusal_reason",
    "refusal_message",
    "error",
    *RECIPE_COLUMNS,
    "image_seed",
    "image_flagged",
    "image_review",
    "image_file",
    "queued_at",
    "started_at",
    "finished_at",
    "inference_seconds",
    "message_id",
    "deleted_at",
    "deleted_by",
)

_MIGRATION_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


# What a member's own history shows: not refused requests, not deleted results.
VISIBLE_SQL = " AND status != 'blocked' AND deleted_at IS NULL"


class StoreError(RuntimeError):
    """The data layer cannot do what was asked; the message says why in one sentence."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer Easel than this one."""


# ---------------------------------------------------------------------------------------------
# Rows


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _ts(value: datetime | float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise StoreError("Times given to the store must be timezone-aware (use UTC).")
        return value.timestamp()
    return float(value)


def _iso(value: datetime | None) -> str:
    return "" if value is None else value.isoformat()


@dataclass(frozen=True)
class ImageRow:
    """One stored image of a generation."""

    generation_id: int
    index: int
    seed: int
    path: Path  # absolute path of the PNG file
    width: int = 0
    height: int = 0
    flagged: bool = False
    # None when not flagged; 'pending' until a moderator releases or removes it.
    review: ReviewState | None = None
    reviewed_by: int | None = None
    reviewed_at: datetime | None = None

    @property
    def public(self) -> bool:
        """May be shown in the channel: not flagged, or released by a moderator."""
        return not self.flagged or self.review == "released"


@dataclass(frozen=True)
class Generation:
    """One request as logged: who, where, the recipe, the outcome, timings, lineage, delivery."""

    id: int
    user_id: int
    user_name: str | None
    guild_id: int | None
    channel_id: int | None
    kind: Kind
    parent_id: int | None
    parent_image_index: int | None
    recipe: dict[str, Any]
    status: Status
    refusal_reason: str | None
    refusal_message: str | None
    error: str | None
    flagged: bool
    prompt_truncated: bool
    runs: int
    attempts: int | None
    batch_size: int | None
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    inference_seconds: float | None
    timings: dict[str, float]
    message_channel_id: int | None
    message_id: int | None
    delivered_at: datetime | None
    deleted_at: datetime | None
    deleted_by: int | None
    # Review of a blocked prompt (banned word): None, 'pending', 'released' or 'removed'.
    review: ReviewState | None
    reviewed_by: int | None
    reviewed_at: datetime | None
    images: tuple[ImageRow, ...] = ()

    @property
    def prompt(self) -> str:
        return str(self.recipe.get("prompt", ""))

    @property
    def negative(self) -> str:
        return str(self.recipe.get("negative", ""))

    @property
    def request(self) -> GenerationRequest:
        """The request rebuilt from the recipe, with `job_id = str(id)` (no source image)."""
        return GenerationRequest.from_recipe(self.recipe, job_id=str(self.id))

    @property
    def cost(self) -> int:
        return self.request.cost

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def delivered(self) -> bool:
        return self.delivered_at is not None

    @property
    def seeds(self) -> list[int]:
        """The seed of each image: from the stored images, else from the recipe."""
        if self.images:
            return [image.seed for image in self.images]
        with contextlib.suppress(Exception):
            return self.request.image_seeds()
        return []

    def image(self, index: int) -> ImageRow | None:
        for image in self.images:
            if image.index == index:
                return image
        return None


@dataclass(frozen=True)
class ReviewItem:
    """One entry of the moderators' review queue: a flagged image, or a blocked prompt."""

    generation: Generation
    image_index: int | None  # None: the blocked prompt itself
    since: datetime

    @property
    def is_prompt(self) -> bool:
        return self.image_index is None


@dataclass(frozen=True)
class Ban:
    id: int
    guild_id: int
    user_id: int
    reason: str
    banned_by: int
    created_at: datetime
    until: datetime | None  # None = permanent
    lifted_at: datetime | None
    lifted_by: int | None

    @property
    def permanent(self) -> bool:
        return self.until is None

    def active_at(self, when: datetime) -> bool:
        return self.lifted_at is None and (self.until is None or self.until > when)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    guild_id: int | None
    actor_id: int
    action: str
    target_user_id: int | None
    target_generation_id: int | None
    reason: str | None
    details: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class GuildSettings:
    guild_id: int
    safety_mode: SafetyMode = "withhold"
    log_channel_id: int | None = None
    words_seeded: bool = False
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


# ---------------------------------------------------------------------------------------------
# Migrations


def load_migrations() -> list[Migration]:
    """The numbered migrations shipped in `bot/migrations/`, checked to be 1, 2, 3, … in order."""
    folder = resources.files("bot").joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise StoreError(
                f"Migration files must be numbered 001, 002, … without gaps; found "
                f"{migration.version:03d}_{migration.name}.sql where {expected:03d} was expected."
            )
    if not found:
        raise StoreError("No migrations found in bot/migrations/.")
    return found


def latest_version() -> int:
    """The schema version this code writes."""
    return len(load_migrations())


def split_statements(sql: str) -> list[str]:
    """Split a migration script into complete statements (trigger bodies stay whole)."""
    statements: list[str] = []
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            if statement and not all(
                part.strip().startswith("--") or not part.strip() for part in statement.splitlines()
            ):
                statements.append(statement)
            buffer = ""
    if buffer.strip() and not all(
        p.strip().startswith("--") or not p.strip() for p in buffer.splitlines()
    ):
        raise StoreError("A migration ends with an incomplete SQL statement.")
    return statements


async def migrate(conn: aiosqlite.Connection, *, target: int | None = None) -> tuple[int, int]:
    """Bring the schema to `target` (default: the latest) in one transaction.

    Returns (version before, version after). The connection must be in autocommit mode
    (`isolation_level=None`). Raises `SchemaTooNewError` for a database newer than the code.
    """
    migrations = load_migrations()
    latest = len(migrations)
    target = latest if target is None else target
    if not 0 <= target <= latest:
        raise StoreError(f"Cannot migrate to version {target}; this code knows 0 to {latest}.")
    await conn.execute("BEGIN IMMEDIATE")
    try:
        async with conn.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        current = int(row[0])
        if current > latest:
            raise SchemaTooNewError(
                f"The database has schema version {current}, but this Easel only knows versions "
                f"up to {latest}; upgrade Easel (or restore a backup made by this version)."
            )
        for migration in migrations[current:target]:
            for statement in split_statements(migration.sql):
                await conn.execute(statement)
        if target > current:
            await conn.execute(f"PRAGMA user_version = {int(target)}")
        await conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            await conn.execute("ROLLBACK")
        raise
    if target > current:
        log.info("Database schema migrated from version %d to %d", current, target)
    return current, max(current, target)


# ---------------------------------------------------------------------------------------------
# The store


_GEN_COLUMNS = """
    id, user_id, user_name, guild_id, channel_id, kind, parent_id, parent_image_index, recipe,
    status, refusal_reason, refusal_message, error, flagged, prompt_truncated, runs, attempts,
    batch_size, created_at, queued_at, started_at, finished_at, inference_seconds, timings,
    message_channel_id, message_id, delivered_at, deleted_at, deleted_by, review, reviewed_by,
    reviewed_at
"""

_IMAGE_COLUMNS = """
    generation_id, idx, seed, file, width, height, flagged, review, reviewed_by, reviewed_at
"""


class _Opener:
    """`await Store.open(…)` or `async with Store.open(…) as store:`."""

    def __init__(self, factory: Callable[[], Any]):
        self._factory = factory
        self._store: Store | None = None

    def __await__(self):
        return self._factory().__await__()

    async def __aenter__(self) -> Store:
        self._store = await self._factory()
        return self._store

    async def __aexit__(self, *exc_info: object) -> None:
        if self._store is not None:
            await self._store.close()


class Store:
    """The prompt log and queue state over one aiosqlite connection (the single writer)."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        path: Path,
        images_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self._conn = conn
        self.path = path
        self.images_dir = images_dir
        self.clock = clock
        # One statement or transaction at a time on the shared connection.
        self._lock = asyncio.Lock()
        self._closed = False

    # -- opening and closing -------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        images_dir: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.time,
        busy_timeout_ms: int = 5000,
        synchronous: str = "FULL",
    ) -> _Opener:
        """Open (creating and migrating as needed) the database at `path`.

        Images go to `images_dir` (default: an `images` folder beside the database).
        `synchronous` is FULL by default so an accepted job survives a power cut, not only a
        crash of the bot; NORMAL is faster and still safe against a crash of the process.
        """
        return _Opener(
            lambda: cls._open(
                Path(path),
                None if images_dir is None else Path(images_dir),
                clock,
                busy_timeout_ms,
                synchronous,
            )
        )

    @classmethod
    async def _open(
        cls,
        path: Path,
        images_dir: Path | None,
        clock: Callable[[], float],
        busy_timeout_ms: int,
        synchronous: str,
    ) -> Store:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreError(f"Unknown synchronous mode {synchronous!r}.")
        path.parent.mkdir(parents=True, exist_ok=True)
        images = images_dir if images_dir is not None else path.parent / "images"
        images.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            async with conn.execute("PRAGMA journal_mode = WAL") as cursor:
                mode = (await cursor.fetchone())[0]
            if str(mode).lower() != "wal":
                log.warning("SQLite journal mode is %s, not WAL", mode)
            await conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            await conn.execute("PRAGMA foreign_keys = ON")
            await migrate(conn)
        except BaseException:
            await conn.close()
            raise
        return cls(conn, path, images, clock=clock)

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            with contextlib.suppress(Exception):
                await self._conn.execute("PRAGMA optimize")
            await self._conn.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- low-level helpers ---------------------------------------------------------------------

    def _now(self) -> float:
        return float(self.clock())

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._lock, self._conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        async with self._lock, self._conn.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in its own (implicit) transaction; returns the rows changed."""
        async with self._lock, self._conn.execute(sql, params) as cursor:
            return cursor.rowcount

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")

    async def pragma(self, name: str) -> Any:
        """Read a PRAGMA (e.g. 'journal_mode', 'foreign_keys', 'user_version')."""
        if not re.fullmatch(r"[a-z_]+", name):
            raise StoreError(f"Not a pragma name: {name!r}.")
        row = await self._one(f"PRAGMA {name}")
        return None if row is None else row[0]

    async def schema_version(self) -> int:
        return int(await self.pragma("user_version"))

    # -- rows to dataclasses -------------------------------------------------------------------

    def image_path(self, generation_id: int, index: int) -> Path:
        """Where image `index` of generation `generation_id` lives (named by ids only)."""
        return self.images_dir / f"{int(generation_id)}_{int(index)}.png"

    def _image(self, row: sqlite3.Row) -> ImageRow:
        return ImageRow(
            generation_id=row["generation_id"],
            index=row["idx"],
            seed=row["seed"],
            path=self.images_dir / row["file"],
            width=row["width"],
            height=row["height"],
            flagged=bool(row["flagged"]),
            review=row["review"],
            reviewed_by=row["reviewed_by"],
            reviewed_at=_dt(row["reviewed_at"]),
        )

    @staticmethod
    def _generation(row: sqlite3.Row, images: Iterable[ImageRow] = ()) -> Generation:
        return Generation(
            id=row["id"],
            user_id=row["user_id"],
            user_name=row["user_name"],
            guild_id=row["guild_id"],
            channel_id=row["channel_id"],
            kind=row["kind"],
            parent_id=row["parent_id"],
            parent_image_index=row["parent_image_index"],
            recipe=json.loads(row["recipe"]),
            status=row["status"],
            refusal_reason=row["refusal_reason"],
            refusal_message=row["refusal_message"],
            error=row["error"],
            flagged=bool(row["flagged"]),
            prompt_truncated=bool(row["prompt_truncated"]),
            runs=row["runs"],
            attempts=row["attempts"],
            batch_size=row["batch_size"],
            created_at=_dt(row["created_at"]),
            queued_at=_dt(row["queued_at"]),
            started_at=_dt(row["started_at"]),
            finished_at=_dt(row["finished_at"]),
            inference_seconds=row["inference_seconds"],
            timings=json.loads(row["timings"]) if row["timings"] else {},
            message_channel_id=row["message_channel_id"],
            message_id=row["message_id"],
            delivered_at=_dt(row["delivered_at"]),
            deleted_at=_dt(row["deleted_at"]),
            deleted_by=row["deleted_by"],
            review=row["review"],
            reviewed_by=row["reviewed_by"],
            reviewed_at=_dt(row["reviewed_at"]),
            images=tuple(images),
        )

    async def _with_images(self, rows: list[sqlite3.Row]) -> list[Generation]:
        if not rows:
            return []
        ids = [row["id"] for row in rows]
        by_gen: dict[int, list[ImageRow]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            image_rows = await self._all(
                f"""
                SELECT {_IMAGE_COLUMNS} FROM images
                WHERE generation_id IN ({marks})
                ORDER BY generation_id, idx
                """,
                chunk,
            )
            for image_row in image_rows:
                by_gen.setdefault(image_row["generation_id"], []).append(self._image(image_row))
        return [self._generation(row, by_gen.get(row["id"], ())) for row in rows]

    async def _select(self, where: str, params: Sequence[Any] = (), tail: str = "") -> list:
        rows = await self._all(f"SELECT {_GEN_COLUMNS} FROM generations {where} {tail}", params)
        return await self._with_images(rows)

    # -- creating generations ------------------------------------------------------------------

    async def _insert_generation(
        self,
        request: GenerationRequest,
        *,
        status: str,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        kind: str,
        parent_id: int | None,
        parent_image_index: int | None,
        user_name: str | None,
        refusal_reason: str | None = None,
        refusal_message: str | None = None,
        review: str | None = None,
    ) -> int:
        if kind not in KINDS:
            raise StoreError(f"Unknown generation kind {kind!r}; use one of: {', '.join(KINDS)}.")
        now = self._now()
        try:
            async with (
                self._lock,
                self._conn.execute(
                    """
                INSERT INTO generations (
                    user_id, user_name, guild_id, channel_id, kind, parent_id,
                    parent_image_index, prompt, negative, recipe, status, refusal_reason,
                    refusal_message, review, created_at, queued_at, search_text
                ) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                    (
                        int(user_id),
                        user_name,
                        guild_id,
                        channel_id,
                        kind,
                        parent_id,
                        parent_image_index,
                        str(request.prompt or ""),
                        str(request.negative or ""),
                        request.to_json(),
                        status,
                        refusal_reason,
                        refusal_message,
                        review,
                        now,
                        now if status == "queued" else None,
                        normalise(f"{request.prompt or ''}\n{request.negative or ''}"),
                    ),
                ) as cursor,
            ):
                return int(cursor.lastrowid)
        except sqlite3.IntegrityError as error:
            if parent_id is not None and "FOREIGN KEY" in str(error).upper():
                raise StoreError(f"Generation #{parent_id} does not exist.") from None
            raise

    async def create_generation(
        self,
        request: GenerationRequest,
        *,
        user_id: int,
        guild_id: int | None = None,
        channel_id: int | None = None,
        kind: Kind = "imagine",
        parent_id: int | None = None,
        parent_image_index: int | None = None,
        user_name: str | None = None,
    ) -> Generation:
        """Log an accepted request as `queued` and return it (its id is the job id).

        The seed is fixed here if the request has none, so the log always holds a reproducible
        recipe. The request's source image (vary/upscale) is not stored: the source is
        `parent_id` + `parent_image_index`, whose file is on disk.
        """
        request = request.with_seed()
        gen_id = await self._insert_generation(
            request,
            status="queued",
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            kind=kind,
            parent_id=parent_id,
            parent_image_index=parent_image_index,
            user_name=user_name,
        )
        return await self._require(gen_id)

    async def log_refusal(
        self,
        request: GenerationRequest,
        *,
        reason: str,
        message: str,
        user_id: int,
        guild_id: int | None = None,
        channel_id: int | None = None,
        kind: Kind = "imagine",
        parent_id: int | None = None,
        parent_image_index: int | None = None,
        user_name: str | None = None,
        review: bool | None = None,
    ) -> Generation:
        """Log a refused request (status `blocked`) with its reason code and the sentence shown.

        `reason` is one of REFUSAL_REASONS. A prompt blocked for a banned word goes to the
        moderators' review queue (override with `review=`). A parent that does not exist is
        kept out of the row (the refusal is still logged).
        """
        if reason not in REFUSAL_REASONS:
            raise StoreError(
                f"Unknown refusal reason {reason!r}; use one of: {', '.join(REFUSAL_REASONS)}."
            )
        if review is None:
            review = reason == "banned_word"
        if (
            parent_id is not None
            and await self._one("SELECT 1 FROM generations WHERE id = ?", (parent_id,)) is None
        ):
            parent_id = parent_image_index = None
        gen_id = await self._insert_generation(
            request,
            status="blocked",
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            kind=kind,
            parent_id=parent_id,
            parent_image_index=parent_image_index,
            user_name=user_name,
            refusal_reason=reason,
            refusal_message=message,
            review="pending" if review else None,
        )
        return await self._require(gen_id)

    # -- status transitions --------------------------------------------------------------------

    async def mark_running(self, gen_ids: Sequence[int]) -> list[Generation]:
        """`queued` → `running` (stamps started_at, counts the run). Returns the rows changed.

        Called before the batch is handed to the worker, so a crash leaves them `running`,
        and `jobs_to_recover` queues them again.
        """
        if not gen_ids:
            return []
        now = self._now()
        changed: list[int] = []
        async with self._transaction() as conn:
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
        async with self._transaction() as conn:
            for gen_id in gen_ids:
                async with conn.execute(
                    "UPDATE generations SET status = 'queued' WHERE id = ? AND status = 'running'",
                    (int(gen_id),),
                ) as cursor:
                    count += cursor.rowcount
        return count

    def _write_png(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    async def save_result(self, gen_id: int, result: GenerationResult) -> Generation | None:
        """Record the worker's result: image files, image rows and the final status at once.

        The status becomes `cancelled` (result.cancelled), `failed` (result.error) or `done`.
        Flagged images are kept unredacted and put in the review queue. Only a `queued` or
        `running` job can finish: for a job already final this writes nothing and returns None,
        so no job ever ends twice.
        """
        gen_id = int(gen_id)
        row = await self._one("SELECT status FROM generations WHERE id = ?", (gen_id,))
        if row is None:
            raise StoreError(f"Generation #{gen_id} does not exist.")
        if row["status"] not in ACTIVE_STATUSES:
            log.warning("Result for #%d ignored: it is already %s", gen_id, row["status"])
            return None
        if result.cancelled:
            status, error = "cancelled", result.error
        elif result.error is not None:
            status, error = "failed", result.error
        else:
            status, error = "done", None
        images = [] if status == "cancelled" else list(result.images)
        # Files first (atomic renames); the rows that point at them commit afterwards.
        for image in images:
            await asyncio.to_thread(
                self._write_png, self.image_path(gen_id, image.index), image.png
            )
        now = self._now()
        timings = {k: float(v) for k, v in (result.timings or {}).items()}
        inference = timings.get("inference")
        flagged = any(image.nsfw for image in images)
        async with self._transaction() as conn:
            async with conn.execute(
                """
                UPDATE generations
                SET status = ?, error = ?, flagged = ?, prompt_truncated = ?, attempts = ?,
                    batch_size = ?, finished_at = ?, inference_seconds = ?, timings = ?
                WHERE id = ? AND status IN ('queued', 'running')
                """,
                (
                    status,
                    error,
                    int(flagged),
                    int(bool(result.prompt_truncated)),
                    result.attempts,
                    result.batch_size,
                    now,
                    inference,
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
                        self.image_path(gen_id, image.index).name,
                        int(image.width),
                        int(image.height),
                        int(bool(image.nsfw)),
                        "pending" if image.nsfw else None,
                    )
                    for image in images
                ],
            )
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
        changed = await self._write(
            """
            UPDATE generations
            SET message_channel_id = ?, message_id = ?, delivered_at = ?
            WHERE id = ?
            """,
            (channel_id, message_id, self._now(), int(gen_id)),
        )
        return bool(changed)

    async def mark_deleted(self, gen_id: int, *, by: int) -> bool:
        """Soft delete: the result is gone from the channel, the log keeps it. False if unknown
        or already deleted."""
        changed = await self._write(
            """
            UPDATE generations SET deleted_at = ?, deleted_by = ?
            WHERE id = ? AND deleted_at IS NULL
            """,
            (self._now(), int(by), int(gen_id)),
        )
        return bool(changed)

    # -- reading generations -------------------------------------------------------------------

    async def get(self, gen_id: int) -> Generation | None:
        """One generation with its images, or None."""
        rows = await self._select("WHERE id = ?", (int(gen_id),))
        return rows[0] if rows else None

    async def _require(self, gen_id: int) -> Generation:
        gen = await self.get(gen_id)
        if gen is None:
            raise StoreError(f"Generation #{gen_id} does not exist.")
        return gen

    async def get_many(self, gen_ids: Sequence[int]) -> list[Generation]:
        """Several generations, in the order of `gen_ids` (unknown ids are left out)."""
        ids = [int(i) for i in gen_ids]
        if not ids:
            return []
        found: dict[int, Generation] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for gen in await self._select(f"WHERE id IN ({marks})", chunk):
                found[gen.id] = gen
        return [found[i] for i in ids if i in found]

    async def children(self, gen_id: int) -> list[Generation]:
        """Direct children (rerolls, remixes, variations, upscales), oldest first."""
        return await self._select("WHERE parent_id = ?", (int(gen_id),), "ORDER BY id")

    async def ancestors(self, gen_id: int, *, limit: int = 100) -> list[Generation]:
        """The parent chain: parent first, the root last (the generation itself left out)."""
        rows = await self._all(
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
        return await self.get_many([row["id"] for row in rows])

    @staticmethod
    def _history_filter(
        user_id: int, guild_id: int | None, visible_only: bool
    ) -> tuple[str, list[Any]]:
        where = "WHERE user_id = ?"
        params: list[Any] = [int(user_id)]
        if guild_id is not None:
            where += " AND guild_id = ?"
            params.append(int(guild_id))
        if visible_only:
            where += " AND status != 'blocked' AND deleted_at IS NULL"
        return where, params

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
        where, params = self._history_filter(user_id, guild_id, visible_only)
        return await self._select(
            where,
            [*params, int(limit), int(offset)],
            "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
        )

    async def count_history(
        self, user_id: int, *, guild_id: int | None = None, visible_only: bool = False
    ) -> int:
        """How many rows `history` pages through (same filters)."""
        where, params = self._history_filter(user_id, guild_id, visible_only)
        row = await self._one(f"SELECT COUNT(*) FROM generations {where}", params)
        return int(row[0])

    @staticmethod
    def _log_filter(
        guild_id: int | None,
        user_id: int | None,
        contains: str | None,
        status: str | None,
        flagged: bool | None,
        since: datetime | float | None,
        until: datetime | float | None = None,
    ) -> tuple[str, list[Any]]:
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
            folded = normalise(contains)
            pattern = "%" + re.sub(r"([\\%_])", r"\\\1", folded) + "%"
            plain = "%" + re.sub(r"([\\%_])", r"\\\1", contains) + "%"
            clauses.append(
                "(search_text LIKE ? ESCAPE '\\'"
                " OR (search_text IS NULL"
                " AND (prompt LIKE ? ESCAPE '\\' OR negative LIKE ? ESCAPE '\\')))"
            )
            params += [pattern, plain, plain]
        if status is not None:
            if status not in STATUSES:
                raise StoreError(f"Unknown status {status!r}; use one of: {', '.join(STATUSES)}.")
            clauses.append("status = ?")
            params.append(status)
        if flagged is not None:
            clauses.append("flagged = 1" if flagged else "flagged = 0")
        if since is not None:
            clauses.append("created_at >= ?")
            params.append(_ts(since))
        if until is not None:
            clauses.append("created_at < ?")
            params.append(_ts(until))
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", params

    async def moderation_log(
        self,
        *,
        guild_id: int | None = None,
        user_id: int | None = None,
        contains: str | None = None,
        status: Status | None = None,
        flagged: bool | None = None,
        since: datetime | float | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> list[Generation]:
        """The prompt log for moderators, newest first, refusals included.

        `contains` matches the prompt or the negative prompt (case-insensitive for ASCII);
        `since` is an aware datetime (or Unix seconds).
        """
        where, params = self._log_filter(guild_id, user_id, contains, status, flagged, since)
        return await self._select(
            where,
            [*params, int(limit), int(offset)],
            "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
        )

    async def count_log(
        self,
        *,
        guild_id: int | None = None,
        user_id: int | None = None,
        contains: str | None = None,
        status: Status | None = None,
        flagged: bool | None = None,
        since: datetime | float | None = None,
    ) -> int:
        where, params = self._log_filter(guild_id, user_id, contains, status, flagged, since)
        row = await self._one(f"SELECT COUNT(*) FROM generations {where}", params)
        return int(row[0])

    async def count_today(self, user_id: int, *, now: datetime | float | None = None) -> int:
        """Requests a member made since 00:00 UTC today that count against the daily quota.

        Refused, failed, and cancelled-before-starting requests do not count.
        """
        moment = _dt(self._now()) if now is None else _dt(_ts(now))
        midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        row = await self._one(
            """
            SELECT COUNT(*) FROM generations
            WHERE user_id = ? AND created_at >= ?
              AND status IN ('queued', 'running', 'done', 'cancelled')
              AND NOT (status = 'cancelled' AND started_at IS NULL)
            """,
            (int(user_id), midnight.timestamp()),
        )
        return int(row[0])

    async def jobs_to_recover(self) -> list[Generation]:
        """Jobs left `queued` or `running` (e.g. by a crash), in the order they were accepted."""
        return await self._select("WHERE status IN ('queued', 'running')", (), "ORDER BY id")

    async def undelivered(
        self, *, since: datetime | float | None = None, limit: int = 100
    ) -> list[Generation]:
        """Finished (`done` or `failed`) jobs whose result was never posted, oldest first."""
        where = "WHERE status IN ('done', 'failed') AND delivered_at IS NULL AND deleted_at IS NULL"
        params: list[Any] = []
        if since is not None:
            where += " AND finished_at >= ?"
            params.append(_ts(since))
        return await self._select(where, [*params, int(limit)], "ORDER BY id LIMIT ?")

    # -- images and requests from disk ---------------------------------------------------------

    async def read_image(self, gen_id: int, index: int) -> bytes:
        """The PNG bytes of one stored image (raises StoreError if the file is missing)."""
        path = self.image_path(gen_id, index)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise StoreError(f"The image file of #{gen_id} image {index + 1} is missing.") from None

    async def load_request(self, gen: Generation) -> GenerationRequest:
        """The runnable request of a logged job: recipe + job id + the source image from disk."""
        request = gen.request
        if request.mode != "txt2img" and request.init_image is None:
            if gen.parent_id is None or gen.parent_image_index is None:
                raise StoreError(f"#{gen.id} has no source image to work from.")
            png = await self.read_image(gen.parent_id, gen.parent_image_index)
            request = GenerationRequest.from_recipe(gen.recipe, job_id=str(gen.id), init_image=png)
        return request

    async def load_result(self, gen: Generation) -> GenerationResult:
        """Rebuild the worker's result of a finished job from the log and the files."""
        from inference.request import GeneratedImage

        images = []
        for image in gen.images:
            try:
                png = await asyncio.to_thread(image.path.read_bytes)
            except FileNotFoundError:
                log.warning("Image file %s of #%d is missing", image.path, gen.id)
                continue
            images.append(
                GeneratedImage(
                    png=png,
                    seed=image.seed,
                    index=image.index,
                    nsfw=image.flagged,
                    width=image.width,
                    height=image.height,
                )
            )
        return GenerationResult(
            job_id=str(gen.id),
            images=images,
            error=gen.error,
            cancelled=gen.status == "cancelled",
            prompt_truncated=gen.prompt_truncated,
            timings=dict(gen.timings),
            batch_size=gen.batch_size or 1,
            attempts=gen.attempts or 1,
        )

    # -- review queue --------------------------------------------------------------------------

    async def review_queue(
        self, *, guild_id: int | None = None, limit: int = 20, offset: int = 0
    ) -> list[ReviewItem]:
        """Pending flagged images and prompts blocked for a banned word, oldest first (by
        generation id). Deleted generations are left out."""
        guild_clause = "" if guild_id is None else "AND g.guild_id = ?"
        guild_params = [] if guild_id is None else [int(guild_id)]
        wanted = int(limit) + int(offset)
        # Each side reads its partial index in id order and stops early; merged here.
        image_rows = await self._all(
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
        prompt_rows = await self._all(
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
        gens = {
            g.id: g for g in await self.get_many(list(dict.fromkeys(r["gen_id"] for r in rows)))
        }
        return [
            ReviewItem(generation=gens[r["gen_id"]], image_index=r["idx"], since=_dt(r["at"]))
            for r in rows
            if r["gen_id"] in gens
        ]

    async def count_pending_review(self, *, guild_id: int | None = None) -> int:
        guild_clause = "" if guild_id is None else "AND g.guild_id = ?"
        params = [] if guild_id is None else [int(guild_id)]
        row = await self._one(
            f"""
            SELECT
              (SELECT COUNT(*) FROM images AS i JOIN generations AS g ON g.id = i.generation_id
               WHERE i.review = 'pending' AND g.deleted_at IS NULL {guild_clause})
            + (SELECT COUNT(*) FROM generations AS g
               WHERE g.review = 'pending' AND g.deleted_at IS NULL {guild_clause})
            """,
            [*params, *params],
        )
        return int(row[0])

    async def record_review(
        self,
        gen_id: int,
        image_index: int | None,
        decision: Literal["released", "removed"],
        *,
        moderator_id: int,
    ) -> bool:
        """A moderator's decision on a flagged image (`image_index`) or a blocked prompt (None).

        Returns False if there is nothing to review there. A decision may be changed later.
        (Write the audit entry with `add_audit` too.)
        """
        if decision not in REVIEW_DECISIONS:
            raise StoreError(f"A review decision is 'released' or 'removed', not {decision!r}.")
        now = self._now()
        if image_index is None:
            changed = await self._write(
                """
                UPDATE generations SET review = ?, reviewed_by = ?, reviewed_at = ?
                WHERE id = ? AND review IS NOT NULL
                """,
                (decision, int(moderator_id), now, int(gen_id)),
            )
        else:
            changed = await self._write(
                """
                UPDATE images SET review = ?, reviewed_by = ?, reviewed_at = ?
                WHERE generation_id = ? AND idx = ? AND flagged = 1
                """,
                (decision, int(moderator_id), now, int(gen_id), int(image_index)),
            )
        return bool(changed)

    # -- bans ----------------------------------------------------------------------------------

    @staticmethod
    def _ban(row: sqlite3.Row) -> Ban:
        return Ban(
            id=row["id"],
            guild_id=row["guild_id"],
            user_id=row["user_id"],
            reason=row["reason"],
            banned_by=row["banned_by"],
            created_at=_dt(row["created_at"]),
            until=_dt(row["until"]),
            lifted_at=_dt(row["lifted_at"]),
            lifted_by=row["lifted_by"],
        )

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
        now = self._now()
        if until is not None and duration is not None:
            raise StoreError("Give a ban either an end time or a duration, not both.")
        end = _ts(until) if until is not None else None
        if duration is not None:
            end = now + duration.total_seconds()
        if end is not None and end <= now:
            raise StoreError("A ban must end in the future.")
        async with self._transaction() as conn:
            await conn.execute(
                """
                UPDATE bans SET lifted_at = ?, lifted_by = ?
                WHERE guild_id = ? AND user_id = ? AND lifted_at IS NULL
                  AND (until IS NULL OR until > ?)
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
        row = await self._one("SELECT * FROM bans WHERE id = ?", (ban_id,))
        return self._ban(row)

    async def active_ban(self, guild_id: int, user_id: int) -> Ban | None:
        """The member's ban in force now (expired and lifted bans do not count), or None."""
        row = await self._one(
            """
            SELECT * FROM bans
            WHERE guild_id = ? AND user_id = ? AND lifted_at IS NULL
              AND (until IS NULL OR until > ?)
            ORDER BY created_at DESC, id DESC LIMIT 1
            """,
            (int(guild_id), int(user_id), self._now()),
        )
        return None if row is None else self._ban(row)

    async def unban(self, guild_id: int, user_id: int, *, by: int) -> bool:
        """Lift the member's active ban; False if there was none."""
        now = self._now()
        changed = await self._write(
            """
            UPDATE bans SET lifted_at = ?, lifted_by = ?
            WHERE guild_id = ? AND user_id = ? AND lifted_at IS NULL
              AND (until IS NULL OR until > ?)
            """,
            (now, int(by), int(guild_id), int(user_id), now),
        )
        return bool(changed)

    async def bans(self, guild_id: int, *, active_only: bool = True) -> list[Ban]:
        """A server's bans, newest first (only those in force unless `active_only=False`)."""
        sql = "SELECT * FROM bans WHERE guild_id = ?"
        params: list[Any] = [int(guild_id)]
        if active_only:
            sql += " AND lifted_at IS NULL AND (until IS NULL OR until > ?)"
            params.append(self._now())
        rows = await self._all(sql + " ORDER BY created_at DESC, id DESC", params)
        return [self._ban(row) for row in rows]

    # -- banned words --------------------------------------------------------------------------

    async def add_banned_word(self, guild_id: int, word: str, *, by: int | None = None) -> bool:
        """Add a (normalised, by the caller) word to a server's list; False if already there."""
        word = word.strip()
        if not word:
            raise StoreError("A banned word cannot be empty.")
        changed = await self._write(
            """
            INSERT OR IGNORE INTO banned_words (guild_id, word, added_by, added_at)
            VALUES (?, ?, ?, ?)
            """,
            (int(guild_id), word, by, self._now()),
        )
        return bool(changed)

    async def remove_banned_word(self, guild_id: int, word: str) -> bool:
        """Remove a word from a server's list; False if it was not there."""
        changed = await self._write(
            "DELETE FROM banned_words WHERE guild_id = ? AND word = ?",
            (int(guild_id), word.strip()),
        )
        return bool(changed)

    async def banned_words(self, guild_id: int) -> list[str]:
        """A server's banned words, sorted."""
        rows = await self._all(
            "SELECT word FROM banned_words WHERE guild_id = ? ORDER BY word", (int(guild_id),)
        )
        return [row["word"] for row in rows]

    async def seed_banned_words(self, guild_id: int, words: Iterable[str]) -> bool:
        """Copy the configured default words into a server's list once (the first time only, so
        a moderator's later removals stick). Returns True if it seeded now."""
        now = self._now()
        words = [w.strip() for w in words if w.strip()]
        async with self._transaction() as conn:
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
                [(int(guild_id), word, now) for word in words],
            )
            await conn.execute(
                """
                INSERT INTO guild_settings (guild_id, words_seeded, updated_at) VALUES (?, 1, ?)
                ON CONFLICT (guild_id) DO UPDATE
                SET words_seeded = 1, updated_at = excluded.updated_at
                """,
                (int(guild_id), now),
            )
        return True

    # -- audit log -----------------------------------------------------------------------------

    @staticmethod
    def _audit(row: sqlite3.Row) -> AuditEntry:
        return AuditEntry(
            id=row["id"],
            guild_id=row["guild_id"],
            actor_id=row["actor_id"],
            action=row["action"],
            target_user_id=row["target_user_id"],
            target_generation_id=row["target_generation_id"],
            reason=row["reason"],
            details=json.loads(row["details"]) if row["details"] else {},
            created_at=_dt(row["created_at"]),
        )

    async def add_audit(
        self,
        guild_id: int | None,
        actor_id: int,
        action: str,
        *,
        target_user_id: int | None = None,
        target_generation_id: int | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Record a moderator action (ban, unban, release, remove, word_add, pause, …)."""
        async with (
            self._lock,
            self._conn.execute(
                """
            INSERT INTO audit_log (guild_id, actor_id, action, target_user_id,
                                   target_generation_id, reason, details, created_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            """,
                (
                    guild_id,
                    int(actor_id),
                    action,
                    target_user_id,
                    target_generation_id,
                    reason,
                    json.dumps(details, sort_keys=True, default=str) if details else None,
                    self._now(),
                ),
            ) as cursor,
        ):
            entry_id = cursor.lastrowid
        row = await self._one("SELECT * FROM audit_log WHERE id = ?", (entry_id,))
        return self._audit(row)

    async def audit_log(
        self,
        guild_id: int | None,
        *,
        action: str | None = None,
        actor_id: int | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> list[AuditEntry]:
        """A server's moderator actions, newest first."""
        sql = "SELECT * FROM audit_log WHERE guild_id IS ?"
        params: list[Any] = [guild_id]
        if action is not None:
            sql += " AND action = ?"
            params.append(action)
        if actor_id is not None:
            sql += " AND actor_id = ?"
            params.append(int(actor_id))
        rows = await self._all(
            sql + " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            [*params, int(limit), int(offset)],
        )
        return [self._audit(row) for row in rows]

    # -- per-server settings and global state --------------------------------------------------

    async def guild_settings(self, guild_id: int) -> GuildSettings:
        """A server's settings (defaults when none were saved)."""
        row = await self._one("SELECT * FROM guild_settings WHERE guild_id = ?", (int(guild_id),))
        if row is None:
            return GuildSettings(guild_id=int(guild_id))
        return GuildSettings(
            guild_id=row["guild_id"],
            safety_mode=row["safety_mode"],
            log_channel_id=row["log_channel_id"],
            words_seeded=bool(row["words_seeded"]),
            updated_at=_dt(row["updated_at"]),
        )

    async def set_safety_mode(self, guild_id: int, mode: SafetyMode) -> GuildSettings:
        """`withhold` (flagged images only in review) or `spoiler` (posted behind a spoiler)."""
        if mode not in SAFETY_MODES:
            raise StoreError(f"The safety mode is 'withhold' or 'spoiler', not {mode!r}.")
        await self._write(
            """
            INSERT INTO guild_settings (guild_id, safety_mode, updated_at) VALUES (?, ?, ?)
            ON CONFLICT (guild_id) DO UPDATE
            SET safety_mode = excluded.safety_mode, updated_at = excluded.updated_at
            """,
            (int(guild_id), mode, self._now()),
        )
        return await self.guild_settings(guild_id)

    async def set_log_channel(self, guild_id: int, channel_id: int | None) -> GuildSettings:
        """The moderators' log channel of a server (None = none)."""
        await self._write(
            """
            INSERT INTO guild_settings (guild_id, log_channel_id, updated_at) VALUES (?, ?, ?)
            ON CONFLICT (guild_id) DO UPDATE
            SET log_channel_id = excluded.log_channel_id, updated_at = excluded.updated_at
            """,
            (int(guild_id), channel_id, self._now()),
        )
        return await self.guild_settings(guild_id)

    async def get_state(self, key: str, default: str | None = None) -> str | None:
        """A small global value that survives restarts (e.g. 'queue.paused')."""
        row = await self._one("SELECT value FROM bot_state WHERE key = ?", (key,))
        return default if row is None else row["value"]

    async def set_state(self, key: str, value: str | None) -> None:
        """Set (or with None, delete) a global value."""
        if value is None:
            await self._write("DELETE FROM bot_state WHERE key = ?", (key,))
        else:
            await self._write(
                """
                INSERT INTO bot_state (key, value) VALUES (?, ?)
                ON CONFLICT (key) DO UPDATE SET value = excluded.value
                """,
                (key, str(value)),
            )

    # -- export --------------------------------------------------------------------------------

    async def iter_export(
        self,
        *,
        guild_id: int | None = None,
        since: datetime | float | None = None,
        include_imageless: bool = True,
        chunk: int = 1000,
    ) -> AsyncIterator[dict[str, Any]]:
        """The log for CSV, oldest first: one row per image, keyed by EXPORT_COLUMNS.

        A request without images (refused, failed, cancelled) gives one row with empty image
        columns, unless `include_imageless=False`. Values are str/int/float/None.
        """
        where, params = self._log_filter(guild_id, None, None, None, None, since)
        last_id = 0
        while True:
            clause = f"{where} AND id > ?" if where else "WHERE id > ?"
            rows = await self._all(
                f"SELECT {_GEN_COLUMNS} FROM generations {clause} ORDER BY id LIMIT ?",
                [*params, last_id, int(chunk)],
            )
            if not rows:
                return
            last_id = rows[-1]["id"]
            for gen in await self._with_images(rows):
                if gen.images:
                    for image in gen.images:
                        yield self._export_row(gen, image)
                elif include_imageless:
                    yield self._export_row(gen, None)

    async def export_rows(
        self,
        *,
        guild_id: int | None = None,
        since: datetime | float | None = None,
        include_imageless: bool = True,
    ) -> list[dict[str, Any]]:
        """`iter_export` as a list."""
        return [
            row
            async for row in self.iter_export(
                guild_id=guild_id, since=since, include_imageless=include_imageless
            )
        ]

    @staticmethod
    def _export_row(gen: Generation, image: ImageRow | None) -> dict[str, Any]:
        recipe = gen.recipe
        row: dict[str, Any] = {
            "generation_id": gen.id,
            "image_index": None if image is None else image.index,
            "created_at": _iso(gen.created_at),
            "user_id": gen.user_id,
            "user_name": gen.user_name,
            "guild_id": gen.guild_id,
            "channel_id": gen.channel_id,
            "kind": gen.kind,
            "parent_id": gen.parent_id,
            "parent_image_index": gen.parent_image_index,
            "status": gen.status,
            "refusal_reason": gen.refusal_reason,
            "refusal_message": gen.refusal_message,
            "error": gen.error,
            "image_seed": None if image is None else image.seed,
            "image_flagged": None if image is None else int(image.flagged),
            "image_review": None if image is None else image.review,
            "image_file": None if image is None else image.path.name,
            "queued_at": _iso(gen.queued_at),
            "started_at": _iso(gen.started_at),
            "finished_at": _iso(gen.finished_at),
            "inference_seconds": gen.inference_seconds,
            "message_id": gen.message_id,
            "deleted_at": _iso(gen.deleted_at),
            "deleted_by": gen.deleted_by,
        }
        for key in RECIPE_COLUMNS:
            row[key] = recipe.get(key)
        return {column: row.get(column) for column in EXPORT_COLUMNS}


__all__ = [
    "ACTIVE_STATUSES",
    "EXPORT_COLUMNS",
    "FINAL_STATUSES",
    "KINDS",
    "REFUSAL_REASONS",
    "REVIEW_DECISIONS",
    "SAFETY_MODES",
    "STATUSES",
    "AuditEntry",
    "Ban",
    "Generation",
    "GuildSettings",
    "ImageRow",
    "Migration",
    "ReviewItem",
    "SchemaTooNewError",
    "Store",
    "StoreError",
    "latest_version",
    "load_migrations",
    "migrate",
    "split_statements",
]
