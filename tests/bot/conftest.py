"""Fixtures for the bot's end-to-end tests."""

import pytest_asyncio

from inference.engine import EngineConfig
from inference.worker import Worker


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tiny_model_dir):
    """One real worker process on the tiny model per test module (starting one takes seconds)."""
    # Previews as often as the e2e settings' progress interval (see tests/bot/e2e.py).
    config = EngineConfig(model=tiny_model_dir, device="cpu", preview_interval=0.2)
    async with Worker(config) as running:
        yield running
