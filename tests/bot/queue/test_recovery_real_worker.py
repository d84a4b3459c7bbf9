"""Recovery with the real worker process (tiny model): kill the bot mid-queue and restart."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3

from bot.db import Database, Repositories
from bot.domain import JobOrigin
from bot.queue import QuietListener, Scheduler
from inference.engine import EngineConfig
from inference.request import GenerationRequest
from inference.worker import Worker
from tests.bot.queue.exactly_once import FINALS_DDL, finals


def statuses(db) -> dict[int, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT id, status FROM generations"))


class CrashWhenSecondBatchRuns(QuietListener):
    """Fires once a job has finished and a later job is being denoised."""

    def __init__(self):
        self.finished: set[int] = set()
        self.fire = asyncio.Event()

    async def on_finished(self, gen, result):
        self.finished.add(gen.id)

    async def on_progress(self, gen_id, step, total):
        if self.finished and gen_id not in self.finished and step >= 1:
            self.fire.set()


def watch(worker: Worker, db, handed: list[str], rerun_after_final: list[str]) -> None:
    """Record every job handed to the worker, and any that had already ended."""
    original = worker.run

    async def run(batch, on_progress=None):
        ended = finals(db)
        for request in batch:
            handed.append(request.job_id)
            if ended[int(request.job_id)]:
                rerun_after_final.append(request.job_id)
        return await original(batch, on_progress)

    worker.run = run


async def test_kill_mid_queue_and_restart_loses_and_repeats_nothing(tmp_path, tiny_model_dir):
    """Every accepted job ends exactly once, done, after a hard kill of bot and worker."""
    db = tmp_path / "easel.sqlite3"
    config = EngineConfig(model=str(tiny_model_dir), device="cpu")
    handed: list[str] = []
    rerun_after_final: list[str] = []

    # First life: accept jobs from three members, die while the second batch runs.
    database = await Database.connect(db)
    repos = Repositories.on(database)
    with sqlite3.connect(db) as conn:
        conn.executescript(FINALS_DDL)
    worker = Worker(config)
    await worker.start()
    watch(worker, db, handed, rerun_after_final)
    scheduler = Scheduler(repos, worker, max_batch=2)
    trigger = CrashWhenSecondBatchRuns()
    scheduler.add_listener(trigger)
    accepted = []
    for i in range(8):
        request = GenerationRequest(
            prompt=f"a fox, take {i}", width=64, height=64, steps=12, seed=100 + i
        )
        accepted.append((await scheduler.submit(request, JobOrigin(user_id=i % 3))).id)
    await scheduler.start()
    await asyncio.wait_for(trigger.fire.wait(), 120)
    # The crash: the dispatcher stops dead (nothing more is written), the worker is killed.
    await scheduler.stop()
    os.kill(worker.pid, signal.SIGKILL)
    await worker.stop()
    await database.close()
    before = statuses(db)
    assert "done" in before.values()
    assert {"queued", "running"} & set(before.values()), before
    done_before = {gen_id for gen_id, status in before.items() if status == "done"}

    # Second life: recover and finish.
    database = await Database.connect(db)
    repos = Repositories.on(database)
    worker = Worker(config)
    await worker.start()
    watch(worker, db, handed, rerun_after_final)
    try:
        scheduler = Scheduler(repos, worker, max_batch=2)
        recovered = await scheduler.recover(redeliver=False)
        assert sorted(recovered) == sorted(set(accepted) - done_before)
        await scheduler.start()
        await asyncio.wait_for(scheduler.idle(), 120)
        after = statuses(db)
        ended = finals(db)
        for gen_id in accepted:
            assert after[gen_id] == "done", (gen_id, after)
            assert ended[gen_id] == 1, (gen_id, ended)
            gen = await repos.generations.get(gen_id)
            assert len(gen.images) == 1 and gen.images[0].path.is_file()
            assert gen.images[0].seed == gen.recipe["seed"]
        assert not rerun_after_final
        for gen_id in done_before:
            assert handed.count(str(gen_id)) == 1
        await scheduler.stop()
    finally:
        await worker.stop()
        await database.close()
