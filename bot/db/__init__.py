"""The data layer: one SQLite database and one repository per table family.

async with Database.open(path) as db:
    repos = Repositories.on(db, images_dir=…)
    gen = await repos.generations.create(request, origin)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .audit import AuditRepository
from .bans import BanRepository
from .database import (
    Database,
    DatabaseDamagedError,
    DiskFullError,
    SchemaTooNewError,
    StoreError,
)
from .export import ExportRepository
from .generations import GenerationRepository
from .guilds import GuildRepository, StateRepository
from .history import HistoryRepository
from .images import ImageFiles
from .lab import LabRepository
from .review import ReviewRepository
from .words import WordRepository


@dataclass(frozen=True)
class Repositories:
    """Every repository over one database (built once in the composition root)."""

    db: Database
    images: ImageFiles
    generations: GenerationRepository
    history: HistoryRepository
    review: ReviewRepository
    bans: BanRepository
    words: WordRepository
    audit: AuditRepository
    guilds: GuildRepository
    state: StateRepository
    export: ExportRepository
    lab: LabRepository

    @classmethod
    def on(cls, db: Database, *, images_dir: Path | None = None) -> Repositories:
        """The repositories of `db`; images go to `images_dir` (default: beside the database)."""
        images = ImageFiles(db, images_dir if images_dir is not None else db.path.parent / "images")
        generations = GenerationRepository(db, images)
        return cls(
            db=db,
            images=images,
            generations=generations,
            history=HistoryRepository(db, generations),
            review=ReviewRepository(db, generations),
            bans=BanRepository(db),
            words=WordRepository(db),
            audit=AuditRepository(db),
            guilds=GuildRepository(db),
            state=StateRepository(db),
            export=ExportRepository(db, generations),
            lab=LabRepository(db, images),
        )


__all__ = [
    "Database",
    "DatabaseDamagedError",
    "DiskFullError",
    "Repositories",
    "SchemaTooNewError",
    "StoreError",
]
