"""The scheduler over a real pool of two CPU worker processes (tiny model): batches run at the
same time, a SIGKILLed worker's batch is retried and every job ends exactly once, and a cancel
reaches the worker that runs the job."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3

import pytest
import pytest_asyncio

from bot.db import Database, Repositories
from bot.domain import JobOrigin
from bot.queue import QuietListener, Scheduler
from inference.backend import WorkerState
from inference.engine import EngineConfig
from inference.pool import LocalPool
from inference.request import GenerationRequest
from tests.bot.queue.exactly_once import FINALS_DDL, finals

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(tiny_model_dir):
    """Two worker processes on the CPU; a short pause per step leaves time to kill or cancel."""
    config = EngineConfig(model=tiny_model_dir, device="cpu", extra={"step_delay": 0.05})
    async with LocalPool(config, ["cpu", "cpu"], restart_delay=0.5) as running:
        yield running


async def all_up(pool: LocalPool, timeout: float = 120) -> None:
    for _ in range(int(timeout / 0.05)):
        if all(s.state == WorkerState.IDLE for s in pool.statuses()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"workers not up: {pool.statuses()}")


@pytest_asyncio.fixture(loop_scope="module")
async def scheduler(pool, tmp_path):
    await all_up(pool)
    for slot in pool.slots:
        slot.worker.timeline.clear()  # job ids start again at 1 in each test's database
    db = tmp_path / "easel.sqlite3"
    async with Database.open(db) as database:
        with sqlite3.connect(db) as conn:
            conn.executescript(FINALS_DDL)
        made = Scheduler(Repositories.on(database), pool, max_batch=1)
        made.db_path = db
        yield made
        await made.stop()


def fox(i: int, steps: int = 8) -> GenerationRequest:
    return GenerationRequest(prompt=f"a fox, take {i}", width=64, height=64, steps=steps, seed=i)


def spans(pool: LocalPool) -> dict[str, tuple[str, float, float]]:
    """Each job's completed batch by the workers' own clocks: job id → (worker, start, end)."""
    out = {}
    for slot in pool.slots:
        for span in slot.worker.timeline:
            for job_id in span.job_ids:
                assert job_id not in out, f"{job_id} completed twice"
                out[job_id] = (slot.name, span.started_at, span.finished_at)
    return out


async def test_two_batches_run_at_the_same_time(pool, scheduler):
    """Two jobs of two members run on both workers at once (by the workers' timestamps)."""
    a = await scheduler.submit(fox(1, steps=12), JobOrigin(user_id=1))
    b = await scheduler.submit(fox(2, steps=12), JobOrigin(user_id=2))
    await scheduler.start()
    await asyncio.wait_for(scheduler.idle(), 120)
    done = spans(pool)
    (wa, start_a, end_a), (wb, start_b, end_b) = done[str(a.id)], done[str(b.id)]
    assert wa != wb
    overlap = min(end_a, end_b) - max(start_a, start_b)
    assert overlap > 0.5 * min(end_a - start_a, end_b - start_b), (start_a, end_a, start_b, end_b)
    for gen in (a, b):
        assert (await scheduler.generations.get(gen.id)).status == "done"


class KillOnce(QuietListener):
    """SIGKILLs the worker that runs the first job seen denoising."""

    def __init__(self, scheduler: Scheduler, pool: LocalPool):
        self.scheduler, self.pool = scheduler, pool
        self.killed: tuple[int, str] | None = None

    async def on_progress(self, gen_id, step, total):
        if self.killed is not None or step < 2:
            return
        worker = self.scheduler.worker_of(gen_id)
        name = worker.name if worker is not None else None
        slot = next((s for s in self.pool.slots if s.name == name), None)
        if slot is not None and slot.worker.pid:
            self.killed = (gen_id, name)
            os.kill(slot.worker.pid, signal.SIGKILL)


async def test_a_killed_worker_s_batch_is_retried_and_every_job_ends_once(pool, scheduler):
    """SIGKILL one worker mid-job: the batch runs again on a worker, the dead one restarts,
    and in the database every job reached a final status exactly once."""
    killer = KillOnce(scheduler, pool)
    scheduler.add_listener(killer)
    restarts = sum(slot.worker.restarts for slot in pool.slots)
    accepted = [(await scheduler.submit(fox(i), JobOrigin(user_id=i % 3))).id for i in range(6)]
    await scheduler.start()
    await asyncio.wait_for(scheduler.idle(), 180)
    assert killer.killed is not None
    killed_id, killed_on = killer.killed
    ended = finals(scheduler.db_path)
    for gen_id in accepted:
        gen = await scheduler.generations.get(gen_id)
        assert gen.status == "done", (gen_id, gen.status, gen.error)
        assert ended[gen_id] == 1, (gen_id, ended)
        assert len(gen.images) == 1 and gen.images[0].path.is_file()
    assert (await scheduler.generations.get(killed_id)).attempts == 2
    done = spans(pool)  # the workers' own record: every job completed once
    assert {str(i) for i in accepted} <= set(done)
    await all_up(pool)
    assert sum(slot.worker.restarts for slot in pool.slots) == restarts + 1
    assert any(s.name == killed_on and s.state == WorkerState.IDLE for s in pool.statuses())


class Progress(QuietListener):
    def __init__(self):
        self.steps: dict[int, int] = {}

    async def on_progress(self, gen_id, step, total):
        self.steps[gen_id] = max(step, self.steps.get(gen_id, 0))


async def test_cancel_of_a_job_on_worker_2_stops_it_there(pool, scheduler):
    """Two long jobs on two workers; cancelling the one on cpu#2 stops it between steps
    while the job on cpu#1 runs on to the end."""
    progress = Progress()
    scheduler.add_listener(progress)
    jobs = [(await scheduler.submit(fox(i, steps=40), JobOrigin(user_id=i))).id for i in (1, 2)]
    await scheduler.start()
    for _ in range(2400):
        if all(progress.steps.get(j, 0) >= 2 for j in jobs):
            break
        await asyncio.sleep(0.05)
    on_two = next(j for j in jobs if scheduler.worker_of(j).name == "cpu#2")
    other = next(j for j in jobs if j != on_two)
    assert scheduler.worker_of(other).name == "cpu#1"
    assert await scheduler.cancel(on_two)
    await asyncio.wait_for(scheduler.idle(), 120)
    assert (await scheduler.generations.get(on_two)).status == "cancelled"
    assert (await scheduler.generations.get(other)).status == "done"
    assert progress.steps[on_two] < 40 and progress.steps[other] == 40
    assert finals(scheduler.db_path)[on_two] == 1
