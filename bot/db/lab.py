"""What the diffusion lab keeps per generation (table `lab_outputs`, migration 006): a lab
view's facts and the names of its extra files, and a plain result's CLIP and safety scores.

The row is written in the same transaction as the result it belongs to (see
`GenerationRepository.save_result`); its files are written before, like the images, named by
the generation id and a name Easel's code chose.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from bot.domain import LabRecord
from inference.lab.spec import ConceptScore
from inference.request import GenerationResult

from .database import Database, chunks, marks
from .images import ImageFiles

FILE_NAME = re.compile(r"^[a-z0-9_]+\.(webp|gif|png)$")


@dataclass(frozen=True)
class LabRow:
    """A `lab_outputs` row ready to insert."""

    generation_id: int
    view: str | None
    data: str
    files: str
    clip_scores: str
    safety_scores: str


def file_path(files: ImageFiles, gen_id: int, name: str) -> Path:
    if not FILE_NAME.match(name):
        raise ValueError(f"Bad lab file name {name!r}")
    return files.images_dir / f"{int(gen_id)}_{name}"


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


async def prepare(files: ImageFiles, gen_id: int, result: GenerationResult) -> LabRow | None:
    """Write a result's lab files and return its row; None when the lab has nothing to keep."""
    clip = {str(i.index): i.clip_score for i in result.images if i.clip_score is not None}
    safety = {
        str(i.index): [s.to_dict() for s in i.safety_scores]
        for i in result.images
        if i.safety_scores
    }
    lab = result.lab
    if lab is None and not clip and not safety:
        return None
    names: list[str] = []
    for extra in lab.files if lab is not None else []:
        await asyncio.to_thread(_write, file_path(files, gen_id, extra.name), extra.data)
        names.append(extra.name)
    return LabRow(
        generation_id=int(gen_id),
        view=lab.view if lab is not None else None,
        data=json.dumps(lab.data if lab is not None else {}, sort_keys=True),
        files=json.dumps(names),
        clip_scores=json.dumps(clip, sort_keys=True),
        safety_scores=json.dumps(safety, sort_keys=True),
    )


async def insert(conn: aiosqlite.Connection, row: LabRow) -> None:
    await conn.execute(
        """
        INSERT OR REPLACE INTO lab_outputs
            (generation_id, view, data, files, clip_scores, safety_scores)
        VALUES (?, ?, ?, ?, ?, ?)
        """,
        (row.generation_id, row.view, row.data, row.files, row.clip_scores, row.safety_scores),
    )


class LabRepository:
    """Reading what the lab kept."""

    def __init__(self, db: Database, files: ImageFiles):
        self.db = db
        self.files = files

    def _record(self, row: Any) -> LabRecord:
        gen_id = int(row["generation_id"])
        safety = {
            int(k): tuple(ConceptScore.from_dict(s) for s in v)
            for k, v in json.loads(row["safety_scores"]).items()
        }
        return LabRecord(
            generation_id=gen_id,
            view=row["view"],
            data=json.loads(row["data"]),
            files=tuple(file_path(self.files, gen_id, n) for n in json.loads(row["files"])),
            clip_scores={int(k): float(v) for k, v in json.loads(row["clip_scores"]).items()},
            safety_scores=safety,
        )

    async def get(self, gen_id: int) -> LabRecord | None:
        row = await self.db.one("SELECT * FROM lab_outputs WHERE generation_id = ?", (int(gen_id),))
        return None if row is None else self._record(row)

    async def get_many(self, gen_ids: list[int]) -> dict[int, LabRecord]:
        found: dict[int, LabRecord] = {}
        for chunk in chunks(gen_ids):
            rows = await self.db.all(
                f"SELECT * FROM lab_outputs WHERE generation_id IN ({marks(chunk)})", chunk
            )
            for row in rows:
                record = self._record(row)
                found[record.generation_id] = record
        return found
