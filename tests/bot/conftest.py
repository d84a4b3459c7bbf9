"""Fixtures for the bot's end-to-end tests."""

import pytest_asyncio

from inference.engine import EngineConfig
from inference.worker import Worker


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tiny_model_dir):
    """One real worker process on the tiny model per test module (starting one takes seconds)."""
    async with Worker(EngineConfig(model=tiny_model_dir, device="cpu")) as running:
        yield running
