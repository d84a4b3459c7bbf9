"""The database's connections: reads on their own read-only connections in WAL mode, so a slow
moderator query never holds up submits."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from bot.db import Database, Repositories
from bot.domain import JobOrigin
from inference.request import GenerationRequest


def req() -> GenerationRequest:
    return GenerationRequest(prompt="a fox", width=64, height=64, steps=4, seed=1)


async def test_a_slow_read_holds_up_neither_writes_nor_other_reads(tmp_path):
    """While one reader is stuck in a long query, a new job is written and read back."""
    async with Database.open(tmp_path / "easel.sqlite3", read_connections=2) as db:
        repos = Repositories.on(db)
        release = threading.Event()
        for reader in db._readers:  # a query that takes as long as the test says
            await reader.create_function("slow", 0, lambda: release.wait(10) and 1)
        slow = asyncio.create_task(db.all("SELECT slow()"))
        await asyncio.sleep(0.1)
        assert not slow.done()
        gen = await asyncio.wait_for(repos.generations.create(req(), JobOrigin(user_id=1)), 5)
        again = await asyncio.wait_for(repos.generations.get(gen.id), 5)
        assert again is not None and again.status == "queued"  # a reader sees the commit
        release.set()
        assert [tuple(row) for row in await slow] == [(1,)]


async def test_searches_take_turns_on_a_reader_of_their_own(tmp_path):
    """A moderator's `contains:` search runs on the scan reader: with one quick reader, a
    member's reads still go through while the search runs, and searches queue behind it."""
    async with Database.open(tmp_path / "easel.sqlite3", read_connections=1) as db:
        repos = Repositories.on(db)
        gen = await repos.generations.create(req(), JobOrigin(user_id=1, guild_id=5))
        release, entered = threading.Event(), threading.Event()

        def slow_like(pattern: str, text: str | None, escape: str = "\\") -> bool:
            entered.set()
            release.wait(10)
            return pattern.strip("%") in (text or "")

        # The scan reader's LIKE waits until the test says; the others' LIKE is SQLite's.
        await db._scanner.create_function("like", 3, slow_like)
        try:
            search = asyncio.create_task(repos.history.count_log(guild_id=5, contains="fox"))
            assert await asyncio.to_thread(entered.wait, 5)
            second = asyncio.create_task(repos.history.moderation_log(guild_id=5, contains="fox"))
            again = await asyncio.wait_for(repos.generations.get(gen.id), 5)
            assert again is not None and again.prompt == "a fox"
            picks = await asyncio.wait_for(repos.history.suggestions(guild_id=5, typed="1"), 5)
            assert [g.id for g in picks] == [gen.id]  # a number typed: no scan
            mine = repos.history.suggestions(guild_id=5, user_id=1, typed="fox")
            assert [g.id for g in await asyncio.wait_for(mine, 5)] == [gen.id]  # a member's own
            assert not search.done() and not second.done()
        finally:
            release.set()
        assert await search == 1
        assert [g.id for g in await second] == [gen.id]


async def test_readers_are_read_only_and_can_be_turned_off(tmp_path):
    """The pooled connections refuse writes; with none, reads share the writer."""
    async with Database.open(tmp_path / "a.sqlite3") as db:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await db.all("INSERT INTO bot_state (key, value) VALUES ('x', 'y')")
        await db.write("INSERT INTO bot_state (key, value) VALUES ('x', 'y')")
        assert await db.count("SELECT COUNT(*) FROM bot_state WHERE key = 'x'") == 1
    async with Database.open(tmp_path / "b.sqlite3", read_connections=0) as db:
        assert db._readers == []
        await db.write("INSERT INTO bot_state (key, value) VALUES ('x', 'y')")
        assert (await db.one("SELECT value FROM bot_state WHERE key = 'x'"))[0] == "y"


async def test_the_wal_is_checkpointed_in_the_background(tmp_path):
    """Commits no longer checkpoint; the checkpointer copies the WAL into the database file."""
    path = tmp_path / "easel.sqlite3"
    async with Database.open(path, checkpoint_every=0.1) as db:
        assert await db.pragma("wal_autocheckpoint") == 0
        for i in range(50):
            await db.write("INSERT INTO bot_state (key, value) VALUES (?, 'v')", (f"k{i}",))
        await asyncio.sleep(0.5)
        # The main file alone (a copy without its -wal) already holds the rows.
        copy = tmp_path / "copy.sqlite3"
        copy.write_bytes(path.read_bytes())
        with sqlite3.connect(copy) as conn:
            assert conn.execute("SELECT COUNT(*) FROM bot_state").fetchone()[0] == 50
