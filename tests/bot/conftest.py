"""Fixtures for the bot's tests: a database with its repositories, schedulers over a fake
worker, and one real worker process per module for the end-to-end tests."""

import pytest
import pytest_asyncio

from bot.db import Database, Repositories
from bot.queue import Scheduler
from inference.engine import EngineConfig
from inference.worker import Worker
from tests.bot.queue.fakes import FakeWorker


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tiny_model_dir):
    """One real worker process on the tiny model per test module (starting one takes seconds)."""
    # Previews as often as the e2e settings' progress interval (see tests/bot/e2e.py).
    config = EngineConfig(model=tiny_model_dir, device="cpu", preview_interval=0.2)
    async with Worker(config) as running:
        yield running


@pytest.fixture
async def repos(tmp_path):
    """The repositories over a fresh database in a temporary folder."""
    async with Database.open(tmp_path / "easel.sqlite3") as db:
        yield Repositories.on(db)


@pytest.fixture
async def make_scheduler(repos):
    """`await make_scheduler(worker=None, **options)`: schedulers stopped after the test."""
    made: list[Scheduler] = []

    async def make(worker=None, **options) -> Scheduler:
        scheduler = Scheduler(repos, worker or FakeWorker(), **options)
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        await scheduler.stop()
