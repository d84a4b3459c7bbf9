"""The prompt log as rows for a CSV file (`/mod export`): one row per image."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any

from bot.domain import Generation, ImageRow

from .database import Database, iso
from .generations import GEN_COLUMNS, GenerationRepository, generation_from_row
from .history import log_filter

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
    "source",  # what an image-to-image request started from ("upload", "#12 image 1")
    "paste",  # zoom out / pan: the source's place on the canvas (left, top, width, height)
    "feather",  # zoom out / pan: the blend band in pixels
)

# Columns of `rows` / `export_rows`, in CSV order.
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
    "upload",
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


def _plain(value: Any) -> Any:
    """Enum members as their stored value."""
    return value.value if hasattr(value, "value") else value


def export_row(gen: Generation, image: ImageRow | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "generation_id": gen.id,
        "image_index": None if image is None else image.index,
        "created_at": iso(gen.created_at),
        "user_id": gen.user_id,
        "user_name": gen.user_name,
        "guild_id": gen.guild_id,
        "channel_id": gen.channel_id,
        "kind": _plain(gen.kind),
        "parent_id": gen.parent_id,
        "parent_image_index": gen.parent_image_index,
        "status": _plain(gen.status),
        "refusal_reason": _plain(gen.refusal_reason),
        "refusal_message": gen.refusal_message,
        "error": gen.error,
        # The request came with an uploaded image: its file under the data folder.
        "upload": None if gen.upload is None else f"uploads/{gen.upload}",
        "image_seed": None if image is None else image.seed,
        "image_flagged": None if image is None else int(image.flagged),
        "image_review": None if image is None else _plain(image.review),
        "image_file": None if image is None else image.path.name,
        "queued_at": iso(gen.queued_at),
        "started_at": iso(gen.started_at),
        "finished_at": iso(gen.finished_at),
        "inference_seconds": gen.inference_seconds,
        "message_id": gen.message_id,
        "deleted_at": iso(gen.deleted_at),
        "deleted_by": gen.deleted_by,
    }
    for key in RECIPE_COLUMNS:
        value = gen.recipe.get(key)
        row[key] = " ".join(str(v) for v in value) if isinstance(value, list) else value
    return {column: row.get(column) for column in EXPORT_COLUMNS}


class ExportRepository:
    def __init__(self, db: Database, generations: GenerationRepository):
        self.db = db
        self.generations = generations

    async def rows(
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
        where, params = log_filter(guild_id, since=since)
        last_id = 0
        while True:
            clause = f"{where} AND id > ?" if where else "WHERE id > ?"
            rows = await self.db.all(
                f"SELECT {GEN_COLUMNS} FROM generations {clause} ORDER BY id LIMIT ?",
                [*params, last_id, int(chunk)],
            )
            if not rows:
                return
            last_id = rows[-1]["id"]
            images = await self.generations.files.of([row["id"] for row in rows])
            for db_row in rows:
                gen = generation_from_row(db_row, images.get(db_row["id"], ()))
                if gen.images:
                    for image in gen.images:
                        yield export_row(gen, image)
                elif include_imageless:
                    yield export_row(gen, None)

    async def export_rows(
        self,
        *,
        guild_id: int | None = None,
        since: datetime | float | None = None,
        include_imageless: bool = True,
    ) -> list[dict[str, Any]]:
        """`rows` as a list."""
        return [
            row
            async for row in self.rows(
                guild_id=guild_id, since=since, include_imageless=include_imageless
            )
        ]


# Spreadsheet programs run a cell that starts with one of these as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

# Discord's ids (19-digit snowflakes): a spreadsheet reads a bare one as a number and keeps only
# 15 digits. Written as the text formula `="…"`, Excel, LibreOffice and Google Sheets all show
# the exact digits as text.
SNOWFLAKE_COLUMNS: frozenset[str] = frozenset(
    {"user_id", "guild_id", "channel_id", "message_id", "deleted_by"}
)


def id_text(value: int) -> str:
    """An id as a cell every spreadsheet keeps as text, digit for digit."""
    return f'="{int(value)}"'


def _cell(column: str, value: Any) -> Any:
    if value is None:
        return ""
    if column in SNOWFLAKE_COLUMNS and isinstance(value, int):
        return id_text(value)
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def csv_bytes(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> tuple[bytes, int]:
    """The rows as CSV (UTF-8 with a byte-order mark, so spreadsheets read accents); Discord ids
    as text (`id_text`); cells that a spreadsheet would run as a formula get a leading
    apostrophe. Text is quoted and numbers are not, so a reader that types unquoted fields
    (`csv.QUOTE_NONNUMERIC`) keeps every text cell a string. Returns (bytes, row count)."""
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=list(columns), extrasaction="ignore", quoting=csv.QUOTE_NONNUMERIC
    )
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow({key: _cell(key, value) for key, value in row.items()})
        count += 1
    return ("\ufeff" + out.getvalue()).encode("utf-8"), count
