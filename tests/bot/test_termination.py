"""SIGTERM's cancellation reaches the start-up task even where Python 3.11's `wait_for` drops
one (it returns the result when its awaitable finishes as the cancellation arrives, which is
how discord.py connects), and it never interrupts a clean-up twice."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from bot.__main__ import _Termination


async def swallow_one_cancellation() -> None:
    """What 3.11's `wait_for` does when the awaited thing finished at the same moment."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        pass


async def sigterm_during(body: Callable[[_Termination], Awaitable[None]]) -> asyncio.Task[None]:
    """Run `body` as the start-up task, then SIGTERM it (as the signal handler does)."""
    started: asyncio.Future[_Termination] = asyncio.get_running_loop().create_future()

    async def start_up() -> None:
        termination = _Termination()
        started.set_result(termination)
        await body(termination)

    task = asyncio.create_task(start_up())
    termination = await started
    await asyncio.sleep(0)
    termination._terminate()
    return task


async def test_a_dropped_cancellation_is_sent_again_while_connecting() -> None:
    steps: list[str] = []

    async def start_up(termination: _Termination) -> None:
        with termination.interruptible():
            await swallow_one_cancellation()
            steps.append("cancellation dropped")
            await asyncio.sleep(10)  # connected: polls the gateway until cancelled
            steps.append("ran on")

    task = await sigterm_during(start_up)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2 * _Termination.RETRY_SECONDS + 1)
    assert steps == ["cancellation dropped"]


async def test_a_clean_up_is_not_cancelled_again() -> None:
    cleaned = asyncio.Event()

    async def start_up(termination: _Termination) -> None:
        try:
            with termination.interruptible():
                await asyncio.sleep(10)
        finally:  # e.g. stopping the workers after the cancellation landed
            await asyncio.sleep(3 * _Termination.RETRY_SECONDS)
            cleaned.set()

    task = await sigterm_during(start_up)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set()
