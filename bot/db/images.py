"""Image files and image rows.

Images are files `<images_dir>/<generation id>_<index>.png`, never named by user input; a
file is written (atomically) before the row that points at it commits. A write that fails for
lack of space raises `DiskFullError`. An image a member uploaded is kept, re-encoded, as
`<uploads_dir>/<generation id>.png` (beside the images folder).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from bot.domain import Generation, ImageRow, ReviewState
from inference.request import GeneratedImage, GenerationRequest, GenerationResult

from .database import (
    Database,
    StoreError,
    chunks,
    disk_full,
    ensure_writable_folder,
    is_disk_full,
    marks,
    to_datetime,
)

log = logging.getLogger(__name__)

IMAGE_COLUMNS = """
    generation_id, idx, seed, file, width, height, flagged, review, reviewed_by, reviewed_at
"""


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename (never half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class ImageFiles:
    """The PNG files of every generation, and their rows in the `images` table."""

    def __init__(
        self,
        db: Database,
        images_dir: Path,
        uploads_dir: Path | None = None,
        *,
        write_file: Callable[[Path, bytes], None] = write_atomically,
    ):
        self.db = db
        self.images_dir = images_dir
        self.uploads_dir = uploads_dir if uploads_dir is not None else images_dir.parent / "uploads"
        # The one place image bytes reach the disk (tests put a full disk here).
        self.write_file = write_file
        ensure_writable_folder(images_dir, "image folder")
        ensure_writable_folder(self.uploads_dir, "upload folder")

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

    async def write(self, generation_id: int, image: GeneratedImage) -> None:
        """Write one result image (atomic rename; the row is the caller's).

        Raises DiskFullError when there is no space (nothing is left behind), StoreError for
        any other failure to write.
        """
        await self._write_bytes(self.path(generation_id, image.index), image.png)

    async def _write_bytes(self, path: Path, data: bytes) -> None:
        try:
            await asyncio.to_thread(self.write_file, path, data)
        except OSError as error:
            if is_disk_full(error):
                raise disk_full(error) from None
            raise StoreError(f"Cannot write {path} ({error.strerror or error}).") from None

    async def probe(self) -> None:
        """Write and remove a small file: DiskFullError while there is no space."""
        path = self.images_dir / ".easel-space-probe"
        try:
            await asyncio.to_thread(self.write_file, path, b"\0" * 4096)
            await asyncio.to_thread(path.unlink, missing_ok=True)
        except OSError as error:
            if is_disk_full(error):
                raise disk_full(error) from None
            raise StoreError(f"Cannot write {path} ({error.strerror or error}).") from None

    async def read(self, gen_id: int, index: int) -> bytes:
        """The PNG bytes of one stored image (raises StoreError if the file is missing)."""
        path = self.path(gen_id, index)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise StoreError(f"The image file of #{gen_id} image {index + 1} is missing.") from None

    async def write_upload(self, generation_id: int, png: bytes) -> str:
        """Keep an upload as `<generation id>.png` (atomic); returns the file's name."""
        name = f"{int(generation_id)}.png"
        await self._write_bytes(self.uploads_dir / name, png)
        return name

    async def read_upload(self, gen: Generation) -> bytes:
        """The PNG bytes of the image uploaded with `gen` (StoreError if there is none)."""
        if gen.upload is None:
            raise StoreError(f"#{gen.id} was not made from an uploaded image.")
        return await self._read_upload(gen.id, gen.upload)

    async def _read_upload(self, gen_id: int, name: str) -> bytes:
        try:
            return await asyncio.to_thread((self.uploads_dir / Path(name).name).read_bytes)
        except FileNotFoundError:
            raise StoreError(f"The uploaded image of #{gen_id} is missing.") from None

    async def source_of(self, gen: Generation) -> bytes:
        """The image an image-to-image job starts from: its upload, the parent's image it was
        made from, or (a reroll or remix of such a job) that job's own source."""
        return await self._walk(gen.id, gen.upload, gen.parent_id, gen.parent_image_index)

    async def source_of_parent(self, gen: Generation) -> bytes:
        """The image the parent of `gen` started from (a lab replay of an image-to-image
        result starts where that result did)."""
        if gen.parent_id is not None:
            row = await self.db.one(
                "SELECT id, upload, parent_id, parent_image_index FROM generations WHERE id = ?",
                (gen.parent_id,),
            )
            if row is not None:
                return await self._walk(row[0], row[1], row[2], row[3])
        raise StoreError(f"#{gen.id} has no source image to work from.")

    async def _walk(
        self, owner: int, upload: str | None, parent_id: int | None, parent_index: int | None
    ) -> bytes:
        start = owner
        for _ in range(100):  # a family tree deeper than this is a loop in broken data
            if upload is not None:
                return await self._read_upload(owner, upload)
            if parent_id is None:
                break
            if parent_index is not None:
                return await self.read(parent_id, parent_index)
            row = await self.db.one(
                "SELECT upload, parent_id, parent_image_index FROM generations WHERE id = ?",
                (parent_id,),
            )
            if row is None:
                break
            owner = parent_id
            upload, parent_id, parent_index = row[0], row[1], row[2]
        raise StoreError(f"#{start} has no source image to work from.")

    # -- requests and results rebuilt from disk ------------------------------------------------

    async def load_request(self, gen: Generation) -> GenerationRequest:
        """The runnable request of a logged job: recipe + job id + the source image from disk."""
        request = gen.request
        ref = request.lab.image_ref if request.lab is not None else None
        if ref is not None and request.init_image is None:
            # A lab view reads the image it looks at (or replays from) by its ids.
            png = await self.read(*ref)
            return GenerationRequest.from_recipe(gen.recipe, job_id=str(gen.id), init_image=png)
        if request.lab is not None and request.mode != "txt2img" and request.init_image is None:
            # A lab replay of an image made from an upload starts where its subject did.
            png = await self.source_of_parent(gen)
            return GenerationRequest.from_recipe(gen.recipe, job_id=str(gen.id), init_image=png)
        if request.mode != "txt2img" and request.init_image is None:
            png = await self.source_of(gen)
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
