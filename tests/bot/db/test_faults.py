"""The data layer on a full disk and with broken files: clear errors, and files left alone."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from bot.db import (
    Database,
    DatabaseDamagedError,
    DiskFullError,
    Repositories,
    SchemaTooNewError,
    StoreError,
)
from bot.db.database import latest_version
from bot.domain import JobOrigin
from inference.request import GeneratedImage, GenerationRequest, GenerationResult
from tests.bot.db.fulldisk import FullDisk, no_space


def req(prompt: str = "a fox") -> GenerationRequest:
    return GenerationRequest(prompt=prompt, width=64, height=64, steps=4, seed=1)


async def test_sqlite_full_becomes_disk_full_error(tmp_path):
    """When SQLite cannot grow the file (SQLITE_FULL), the store says "disk full"."""
    async with Database.open(tmp_path / "easel.sqlite3") as db:
        repos = Repositories.on(db)
        pages = await db.pragma("page_count")
        await db.write(f"PRAGMA max_page_count = {int(pages)}")  # no room to grow: a full disk
        with pytest.raises(DiskFullError, match="disk is full"):
            for i in range(5000):
                await repos.generations.create(req("x" * 900 + str(i)), JobOrigin(user_id=1))
        # Reads still work, and writes again once there is room.
        assert await db.count("SELECT COUNT(*) FROM generations") >= 0
        await db.write("PRAGMA max_page_count = 1073741823")
        await repos.generations.create(req(), JobOrigin(user_id=1))


async def test_image_write_without_space_is_disk_full_and_saves_nothing(repos):
    """An image that cannot be written: DiskFullError, and the job stays as it was."""
    gen = await repos.generations.create(req(), JobOrigin(user_id=1))
    repos.images.write_file = no_space
    image = GeneratedImage(png=b"\x89PNG", seed=1, index=0, width=64, height=64)
    with pytest.raises(DiskFullError):
        await repos.generations.save_result(gen.id, GenerationResult(str(gen.id), images=[image]))
    assert (await repos.generations.get(gen.id)).status == "queued"
    assert not list(repos.images.images_dir.iterdir())
    with pytest.raises(DiskFullError):
        await repos.images.probe()


async def test_simulated_full_database_fails_writes_and_keeps_reads(repos):
    """The FullDisk helper: writes raise DiskFullError (from SQLite's own error), reads work."""
    gen = await repos.generations.create(req(), JobOrigin(user_id=1))
    disk = FullDisk(repos)
    disk.fill()
    with pytest.raises(DiskFullError):
        await repos.generations.create(req(), JobOrigin(user_id=1))
    with pytest.raises(DiskFullError):
        await repos.generations.mark_running([gen.id])
    assert (await repos.generations.get(gen.id)).status == "queued"
    disk.free()
    assert [g.id for g in await repos.generations.mark_running([gen.id])] == [gen.id]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("how", ["header", "truncated", "garbled"])
async def test_damaged_database_is_refused_and_not_changed(tmp_path, how):
    """A corrupt file: DatabaseDamagedError naming it; not one byte of it changes."""
    path = tmp_path / "easel.sqlite3"
    async with Database.open(path) as db:
        await db.write("CREATE TABLE padding (x TEXT)")
        for _ in range(100):
            await db.write("INSERT INTO padding VALUES (?)", ("y" * 800,))
    data = bytearray(path.read_bytes())
    if how == "header":
        data[:100] = b"\x00" * 100
    elif how == "truncated":
        data = data[: len(data) // 2]
    else:
        for start in range(3 * 4096, len(data), 4096):
            data[start : start + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    before = digest(path)
    with pytest.raises(DatabaseDamagedError, match="restore it from your backup") as refused:
        await Database.connect(path)
    assert str(path) in str(refused.value)
    assert digest(path) == before


async def test_newer_database_is_refused_before_anything_writes(tmp_path):
    """user_version too high: refused while the file is still in its own journal mode."""
    path = tmp_path / "easel.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE future (x INTEGER)")
        conn.execute(f"PRAGMA user_version = {latest_version() + 1}")
    before = digest(path)
    with pytest.raises(SchemaTooNewError):
        await Database.connect(path)
    assert digest(path) == before
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


async def test_data_folder_that_is_a_file_is_one_sentence(tmp_path):
    """A data path that is a file, not a folder: a StoreError saying so."""
    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(StoreError, match="exists but is not a folder"):
        await Database.connect(tmp_path / "data" / "easel.sqlite3")
