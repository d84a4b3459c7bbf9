"""Image files and image rows.

Images are files `<images_dir>/<generation id>_<index>.png`, never named by user input; a
file is written (atomically) before the row that points at it commits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from pathlib import Path

from bot.domain import Generation, ImageRow, ReviewState
from inference.request import GeneratedImage, GenerationRequest, GenerationResult

from .database import Database, StoreError, chunks, marks, to_datetime

log = logging.getLogger(__name__)

IMAGE_COLUMNS = """
    generation_id, idx, seed, file, width, height, flagged, review, reviewed_by, reviewed_at
"""


class ImageFiles:
    """The PNG files of every generation, and their rows in the `images` table."""

    def __init__(self, db: Database, images_dir: Path):
        self.db = db
        self.images_dir = images_dir
        images_dir.mkdir(parents=True, exist_ok=True)

    def path(self, generation_id: int, index: int) -> Path:
        """Where image `index` of generation `generation_id` lives (named by ids only)."""
        return self.images_dir / f"{int(generation_id)}_{int(index)}.png"

    def row(self, row: sqlite3.Row) -> ImageRow:
        return ImageRow(
            generation_id=row["generation_id"],
            index=row["idx"],
            seed=row["seed"],
            path=self.images_dir / row["file"],
            width=row["width"],
            height=row["height"],
            flagged=bool(row["flagged"]),
            review=None if row["review"] is None else ReviewState(row["review"]),
            reviewed_by=row["reviewed_by"],
            reviewed_at=to_datetime(row["reviewed_at"]),
        )

    async def of(self, gen_ids: list[int]) -> dict[int, list[ImageRow]]:
        """The image rows of these generations, by generation id, in index order."""
        by_gen: dict[int, list[ImageRow]] = {}
        for chunk in chunks(gen_ids):
            rows = await self.db.all(
                f"""
                SELECT {IMAGE_COLUMNS} FROM images
                WHERE generation_id IN ({marks(chunk)})
                ORDER BY generation_id, idx
                """,
                chunk,
            )
            for row in rows:
                by_gen.setdefault(row["generation_id"], []).append(self.row(row))
        return by_gen

    # -- files ---------------------------------------------------------------------------------

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    async def write(self, generation_id: int, image: GeneratedImage) -> None:
        """Write one result image (atomic rename; the row is the caller's)."""
        await asyncio.to_thread(self._write, self.path(generation_id, image.index), image.png)

    async def read(self, gen_id: int, index: int) -> bytes:
        """The PNG bytes of one stored image (raises StoreError if the file is missing)."""
        path = self.path(gen_id, index)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise StoreError(f"The image file of #{gen_id} image {index + 1} is missing.") from None

    # -- requests and results rebuilt from disk ------------------------------------------------

    async def load_request(self, gen: Generation) -> GenerationRequest:
        """The runnable request of a logged job: recipe + job id + the source image from disk."""
        request = gen.request
        ref = request.lab.image_ref if request.lab is not None else None
        if ref is not None and request.init_image is None:
            # A lab view reads the image it looks at (or replays from) by its ids.
            png = await self.read(*ref)
            return GenerationRequest.from_recipe(gen.recipe, job_id=str(gen.id), init_image=png)
        if request.mode != "txt2img" and request.init_image is None:
            if gen.parent_id is None or gen.parent_image_index is None:
                raise StoreError(f"#{gen.id} has no source image to work from.")
            png = await self.read(gen.parent_id, gen.parent_image_index)
            request = GenerationRequest.from_recipe(gen.recipe, job_id=str(gen.id), init_image=png)
        return request

    async def load_result(self, gen: Generation) -> GenerationResult:
        """Rebuild the worker's result of a finished job from the log and the files."""
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
