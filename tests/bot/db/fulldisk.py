"""A full disk, simulated without filling the real one.

Image files go through the `ImageFiles.write_file` seam, which raises OSError(ENOSPC) as the
kernel does. SQLite is left real but its connection answers every write with the error SQLite
itself raises when it has no space (SQLITE_FULL, made once by a real database whose size is
capped with `PRAGMA max_page_count`). Reads keep working, as they do on a full disk.

    disk = FullDisk(repos)
    disk.fill()    # or disk.fill(database=False): only the image files fail
    ...
    disk.free()
"""

from __future__ import annotations

import errno
import functools
import os
import sqlite3
from pathlib import Path
from typing import Any

from bot.db import Repositories

WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "COMMIT", "CREATE", "DROP", "ALTER")


def no_space(path: Path, data: bytes) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@functools.cache
def sqlite_full_error() -> sqlite3.OperationalError:
    """The exception SQLite raises when the database cannot grow (SQLITE_FULL)."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (x BLOB)")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    try:
        for _ in range(1000):
            conn.execute("INSERT INTO t VALUES (zeroblob(4000))")
    except sqlite3.OperationalError as error:
        assert error.sqlite_errorcode == sqlite3.SQLITE_FULL, error
        return error
    finally:
        conn.close()
    raise AssertionError("max_page_count did not stop the database from growing")


class _Fails:
    """What `conn.execute(...)` returns for a write on a full disk: awaiting it (or entering
    it, as `async with`) raises SQLITE_FULL."""

    def __await__(self) -> Any:
        raise sqlite_full_error()
        yield  # pragma: no cover - makes this a generator

    async def __aenter__(self) -> Any:
        raise sqlite_full_error()

    async def __aexit__(self, *exc: object) -> None:
        return None


class _FullConnection:
    """An aiosqlite connection whose writes fail for lack of space."""

    def __init__(self, real: Any):
        self._real = real

    def execute(self, sql: str, params: Any = ()) -> Any:
        if sql.lstrip().split(None, 1)[0].upper() in WRITES:
            return _Fails()
        return self._real.execute(sql, params)

    def executemany(self, sql: str, params: Any) -> Any:
        return _Fails()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class FullDisk:
    def __init__(self, repos: Repositories):
        self.repos = repos
        self._write_file = repos.images.write_file
        self._conn = repos.db._conn

    def fill(self, *, database: bool = True) -> None:
        self.repos.images.write_file = no_space
        if database:
            self.repos.db._conn = _FullConnection(self._conn)  # type: ignore[assignment]

    def free(self) -> None:
        self.repos.images.write_file = self._write_file
        self.repos.db._conn = self._conn
