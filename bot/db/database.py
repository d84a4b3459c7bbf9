"""The SQLite database: one aiosqlite connection for writes (the single writer), a few read-only
ones for reads, transactions, migrations.

`<data>/easel.sqlite3` in WAL mode with `busy_timeout` and foreign keys on. In WAL mode readers
never block the writer nor each other, so a moderator's slow search (a `contains:` over a
million rows) does not hold up /imagine's writes or its quick reads. Such scans take turns on
a reader of their own: taking the quick reads' connections, they tripled /imagine's p99
submit time on two cores (11 ms, against 3–5 ms on a reader of their own or with no search;
measured with bench_queue.py).
The WAL is checkpointed every few seconds from a connection of its own, not by whichever
commit crosses SQLite's threshold: with a long read open, those automatic checkpoints made
every commit slow.

The schema lives in numbered files `bot/db/migrations/NNN_name.sql`, applied in one
transaction; the version is `PRAGMA user_version`. Before anything writes, the file is read
through a read-only connection: a damaged file is refused with `DatabaseDamagedError` and one
newer than this code with `SchemaTooNewError`, and neither is changed. A write that fails for
lack of space raises `DiskFullError`. Times are UTC: stored as Unix seconds, handed out as
aware `datetime`s.

The repositories (one module per table family beside this one) share a `Database`:

    async with Database.open(settings.database_path) as db:
        repos = Repositories.on(db, images_dir=settings.images_dir)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


class StoreError(RuntimeError):
    """The data layer cannot do what was asked; the message says why in one sentence."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer Easel than this one."""


class DatabaseDamagedError(StoreError):
    """The database file is corrupt; it must be restored from a backup."""


class DiskFullError(StoreError):
    """A write failed because the disk (or the user's quota) is full; retrying later works."""


# SQLite's answers for a file that is not (any more) a sound database.
_DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def is_disk_full(error: BaseException) -> bool:
    """An OSError or SQLite error that means "no space left"."""
    if isinstance(error, DiskFullError):
        return True
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(error, OSError) and error.errno in _FULL_ERRNOS


def disk_full(error: BaseException) -> DiskFullError:
    """The DiskFullError for `error` (an OSError or SQLite error that `is_disk_full`)."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return DiskFullError(f"The disk is full ({reason}).")


@contextlib.contextmanager
def _full_as_store_error() -> Generator[None, None, None]:
    """Turn "no space left" from SQLite into DiskFullError (the callers can retry it)."""
    try:
        yield
    except sqlite3.Error as error:
        if is_disk_full(error):
            raise disk_full(error) from None
        raise


# ---------------------------------------------------------------------------------------------
# Start-up checks: nothing is written until the folder, the file and its version are known good


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


def ensure_writable_folder(folder: Path, what: str = "data folder") -> None:
    """Create `folder` if needed and prove it writable by making (and removing) a file there.

    Raises StoreError with one sentence. An actual write, not `os.access`: root passes every
    permission check but still cannot write to a read-only file system.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StoreError(f"The {what} {folder} exists but is not a folder.") from None
    except OSError as error:
        raise StoreError(
            f"Cannot create the {what} {folder} ({_reason(error)}); make its parent writable "
            "or set EASEL_DATA_DIR to another folder."
        ) from None
    try:
        handle, name = tempfile.mkstemp(prefix=".easel-write-test-", dir=folder)
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        raise StoreError(
            f"The {what} {folder} is not writable ({_reason(error)}); make it writable for "
            "this user or set EASEL_DATA_DIR to another folder."
        ) from None


def _damaged(path: Path, detail: str) -> DatabaseDamagedError:
    return DatabaseDamagedError(
        f"The database {path} is damaged ({detail}); restore it from your backup "
        "(Easel did not change it)."
    )


def inspect_existing(path: Path) -> None:
    """Read an existing database without writing to it: writable, intact, not too new.

    Runs before the read-write connection, whose first statements (journal mode, migrations)
    would otherwise change a file that must be left as it is.
    """
    if not path.exists():
        return
    if not path.is_file():
        raise StoreError(f"The database {path} is not a file.")
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as error:
        raise StoreError(
            f"The database {path} is not writable ({_reason(error)}); make it writable for "
            "this user."
        ) from None
    latest = latest_version()
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
        finally:
            conn.close()
    except sqlite3.Error as error:
        if getattr(error, "sqlite_errorcode", None) in _DAMAGED:
            raise _damaged(path, str(error)) from None
        raise StoreError(f"Cannot read the database {path} ({error}).") from None
    if problems != ["ok"]:
        raise _damaged(path, "; ".join(str(p) for p in problems[:2]))
    if version > latest:
        raise SchemaTooNewError(
            f"The database {path} has schema version {version}, but this Easel only knows "
            f"versions up to {latest}; upgrade Easel (or restore a backup made by this "
            "version). It was not changed."
        )


# ---------------------------------------------------------------------------------------------
# Times


def to_datetime(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def required_datetime(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def to_timestamp(value: datetime | float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise StoreError("Times given to the store must be timezone-aware (use UTC).")
        return value.timestamp()
    return float(value)


def iso(value: datetime | None) -> str:
    return "" if value is None else value.isoformat()


# ---------------------------------------------------------------------------------------------
# Migrations


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The numbered migrations shipped in `bot/db/migrations/`, checked to be 1, 2, 3, …"""
    folder = resources.files("bot.db").joinpath("migrations")
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
        raise StoreError("No migrations found in bot/db/migrations/.")
    return found


def latest_version() -> int:
    """The schema version this code writes."""
    return len(load_migrations())


def _only_comments(text: str) -> bool:
    return all(line.strip().startswith("--") or not line.strip() for line in text.splitlines())


def split_statements(sql: str) -> list[str]:
    """Split a migration script into complete statements (trigger bodies stay whole)."""
    statements: list[str] = []
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            if statement and not _only_comments(statement):
                statements.append(statement)
            buffer = ""
    if buffer.strip() and not _only_comments(buffer):
        raise StoreError("A migration ends with an incomplete SQL statement.")
    return statements


async def _scalar(conn: aiosqlite.Connection, sql: str) -> Any:
    async with conn.execute(sql) as cursor:
        row = await cursor.fetchone()
    return None if row is None else row[0]


async def migrate(conn: aiosqlite.Connection, *, target: int | None = None) -> tuple[int, int]:
    """Bring the schema to `target` (default: the latest) in one transaction.

    Returns (version before, version after). The connection must be in autocommit mode
    (`isolation_level=None`). Raises `SchemaTooNewError` for a database newer than the code.
    Foreign keys are off while migrations run (a table rebuild must not cascade) and checked
    before the commit.
    """
    migrations = load_migrations()
    latest = len(migrations)
    target = latest if target is None else target
    if not 0 <= target <= latest:
        raise StoreError(f"Cannot migrate to version {target}; this code knows 0 to {latest}.")
    foreign_keys = bool(await _scalar(conn, "PRAGMA foreign_keys"))
    await conn.execute("PRAGMA foreign_keys = OFF")
    try:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            current = int(await _scalar(conn, "PRAGMA user_version"))
            if current > latest:
                raise SchemaTooNewError(
                    f"The database has schema version {current}, but this Easel only knows "
                    f"versions up to {latest}; upgrade Easel (or restore a backup made by this "
                    "version)."
                )
            for migration in migrations[current:target]:
                for statement in split_statements(migration.sql):
                    await conn.execute(statement)
            if target > current:
                async with conn.execute("PRAGMA foreign_key_check") as cursor:
                    broken = await cursor.fetchone()
                if broken is not None:
                    raise StoreError(
                        f"A migration left a broken reference in table {broken[0]}; the "
                        "database was not changed."
                    )
                await conn.execute(f"PRAGMA user_version = {int(target)}")
            await conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise
    finally:
        await conn.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
    if target > current:
        log.info("Database schema migrated from version %d to %d", current, target)
    return current, max(current, target)


async def _make_reader(reader: aiosqlite.Connection, busy_timeout_ms: int) -> None:
    reader.row_factory = sqlite3.Row
    await reader.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    await reader.execute("PRAGMA query_only = ON")


# ---------------------------------------------------------------------------------------------
# The database


class Database:
    """The writer connection and a pool of reader connections, shared by the repositories."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        readers: Sequence[aiosqlite.Connection] = (),
        scanner: aiosqlite.Connection | None = None,
        checkpointer: aiosqlite.Connection | None = None,
        checkpoint_every: float = 5.0,
    ):
        self._conn = conn
        self.path = path
        self.clock = clock
        # One statement or transaction at a time on the writer.
        self._lock = asyncio.Lock()
        self._readers = list(readers)
        # Idle readers; a read takes one (or, with none configured, the writer).
        self._free: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        for reader in self._readers:
            self._free.put_nowait(reader)
        # Long scans, one at a time, on a reader of their own (see the module docstring).
        self._scanner = scanner
        self._scan_lock = asyncio.Lock()
        self._checkpointer = checkpointer
        self._checkpoints: asyncio.Task[None] | None = None
        if checkpointer is not None:
            self._checkpoints = asyncio.create_task(
                self._checkpoint_loop(checkpointer, checkpoint_every), name="easel-checkpoints"
            )
        self._closed = False

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_ms: int = 5000,
        synchronous: str = "FULL",
        read_connections: int = 3,
        checkpoint_every: float = 5.0,
    ) -> AsyncIterator[Database]:
        """`async with Database.open(path) as db:` — created and migrated as needed.

        `synchronous` is FULL by default so an accepted job survives a power cut, not only a
        crash of the bot; NORMAL is faster and still safe against a crash of the process.
        `read_connections` read-only connections serve `all`, `one` and `count` (0 = reads
        share the writer).
        """
        db = await cls.connect(
            path,
            clock=clock,
            busy_timeout_ms=busy_timeout_ms,
            synchronous=synchronous,
            read_connections=read_connections,
            checkpoint_every=checkpoint_every,
        )
        try:
            yield db
        finally:
            await db.close()

    @classmethod
    async def connect(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_ms: int = 5000,
        synchronous: str = "FULL",
        read_connections: int = 3,
        checkpoint_every: float = 5.0,
    ) -> Database:
        """Open without a context manager (close it with `await db.close()`)."""
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise StoreError(f"Unknown synchronous mode {synchronous!r}.")
        path = Path(path)
        await asyncio.to_thread(ensure_writable_folder, path.parent)
        await asyncio.to_thread(inspect_existing, path)
        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = await _scalar(conn, "PRAGMA journal_mode = WAL")
            if str(mode).lower() != "wal":
                log.warning("SQLite journal mode is %s, not WAL", mode)
            await conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            await conn.execute("PRAGMA foreign_keys = ON")
            with _full_as_store_error():
                await migrate(conn)
        except sqlite3.DatabaseError as error:
            await conn.close()
            if getattr(error, "sqlite_errorcode", None) in _DAMAGED:
                raise _damaged(path, str(error)) from None
            raise
        except BaseException:
            await conn.close()
            raise
        readers: list[aiosqlite.Connection] = []
        scanner: aiosqlite.Connection | None = None
        checkpointer: aiosqlite.Connection | None = None
        try:
            for _ in range(max(0, int(read_connections))):
                reader = await aiosqlite.connect(path, isolation_level=None)
                readers.append(reader)
                await _make_reader(reader, busy_timeout_ms)
            if readers:
                scanner = await aiosqlite.connect(path, isolation_level=None)
                await _make_reader(scanner, busy_timeout_ms)
                # Checkpoints move off the commits (see the module docstring).
                await conn.execute("PRAGMA wal_autocheckpoint = 0")
                checkpointer = await aiosqlite.connect(path, isolation_level=None)
                await checkpointer.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        except BaseException:
            for opened in [*readers, scanner, checkpointer]:
                if opened is not None:
                    await opened.close()
            await conn.close()
            raise
        return cls(
            conn,
            path,
            clock=clock,
            readers=readers,
            scanner=scanner,
            checkpointer=checkpointer,
            checkpoint_every=checkpoint_every,
        )

    async def _checkpoint_loop(self, conn: aiosqlite.Connection, every: float) -> None:
        """Copy the WAL into the database now and then; PASSIVE waits for no one."""
        failing = False
        while True:
            await asyncio.sleep(every)
            try:
                await conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception as error:  # busy or a disk problem: the next round tries again
                if not failing:  # once, not every few seconds while the disk is full
                    log.warning(
                        "WAL checkpoint failed (tried again every %.0f s): %s", every, error
                    )
                failing = True
            else:
                failing = False

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
        for opened in [*self._readers, self._scanner, self._checkpointer]:
            if opened is not None:
                with contextlib.suppress(Exception):
                    await opened.close()
        async with self._lock:
            with contextlib.suppress(Exception):
                await self._conn.execute("PRAGMA optimize")
            await self._conn.close()

    # -- statements ----------------------------------------------------------------------------

    def now(self) -> float:
        return float(self.clock())

    @contextlib.asynccontextmanager
    async def _reading(self, scan: bool = False) -> AsyncIterator[aiosqlite.Connection]:
        """An idle reader for one query (it sees every committed write); with `scan`, the
        reader for queries that read much of a table."""
        if scan and self._scanner is not None:
            async with self._scan_lock:
                yield self._scanner
            return
        if not self._readers:
            async with self._lock:
                yield self._conn
            return
        reader = await self._free.get()
        try:
            yield reader
        finally:
            self._free.put_nowait(reader)

    async def all(
        self, sql: str, params: Sequence[Any] = (), *, scan: bool = False
    ) -> list[sqlite3.Row]:
        """Every row of a query; `scan` for one that reads much of a table (a search)."""
        with _full_as_store_error():
            async with self._reading(scan) as conn, conn.execute(sql, params) as cursor:
                return list(await cursor.fetchall())

    async def one(
        self, sql: str, params: Sequence[Any] = (), *, scan: bool = False
    ) -> sqlite3.Row | None:
        with _full_as_store_error():
            async with self._reading(scan) as conn, conn.execute(sql, params) as cursor:
                row: sqlite3.Row | None = await cursor.fetchone()
                return row

    async def count(self, sql: str, params: Sequence[Any] = (), *, scan: bool = False) -> int:
        """The first column of the first row of a COUNT(*) query."""
        row = await self.one(sql, params, scan=scan)
        return 0 if row is None else int(row[0])

    async def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in its own (implicit) transaction; returns the rows changed."""
        with _full_as_store_error():
            async with self._lock, self._conn.execute(sql, params) as cursor:
                return int(cursor.rowcount)

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One INSERT; returns the new row's id."""
        with _full_as_store_error():
            async with self._lock, self._conn.execute(sql, params) as cursor:
                return int(cursor.lastrowid or 0)

    async def insert_returning(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row:
        """One `INSERT … RETURNING …`; returns the new row as it was written (one trip to the
        database instead of an insert and a read)."""
        with _full_as_store_error():
            async with self._lock, self._conn.execute(sql, params) as cursor:
                row: sqlite3.Row | None = await cursor.fetchone()
        if row is None:
            raise StoreError("The new row was not returned.")
        return row

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """`async with db.transaction() as conn:` — BEGIN IMMEDIATE … COMMIT (ROLLBACK on error)."""
        async with self._lock:
            with _full_as_store_error():
                await self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                    await self._conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(Exception):
                        await self._conn.execute("ROLLBACK")
                    raise

    async def pragma(self, name: str) -> Any:
        """Read a PRAGMA (e.g. 'journal_mode', 'foreign_keys', 'user_version')."""
        if not re.fullmatch(r"[a-z_]+", name):
            raise StoreError(f"Not a pragma name: {name!r}.")
        # The writer's, which the connection-level settings (foreign keys) are about.
        async with self._lock, self._conn.execute(f"PRAGMA {name}") as cursor:
            row = await cursor.fetchone()
        return None if row is None else row[0]

    async def schema_version(self) -> int:
        return int(await self.pragma("user_version"))


def chunks(ids: Sequence[int], size: int = 500) -> Generator[list[int], None, None]:
    """Ids in slices small enough for one `IN (?, ?, …)` (SQLite limits bound parameters)."""
    for start in range(0, len(ids), size):
        yield [int(i) for i in ids[start : start + size]]


def marks(values: Sequence[Any]) -> str:
    """`?, ?, ?` for an `IN (…)` clause."""
    return ",".join("?" * len(values))
