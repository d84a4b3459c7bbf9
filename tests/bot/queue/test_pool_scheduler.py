"""The scheduler over a pool of (fake) workers: one batch per free worker, retry on any worker
after a crash, cancel where the job runs, pause, combined ETA, fairness across the pool, and
the crash-and-restart property with several workers."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from bot.db import Repositories
from bot.domain import JobOrigin
from bot.queue import Scheduler
from inference.backend import WorkerState
from inference.worker import CRASHED_TWICE
from tests.bot.queue.fakes import FakePool, Recorder, req
from tests.bot.queue.test_scheduler import QueueMachine


async def wait_until(condition, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.002)):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition not reached")


def ids(batch) -> set[int]:
    return {int(r.job_id) for r in batch}


async def test_each_free_worker_gets_the_next_fair_batch(repos, make_scheduler):
    """Two workers run two batches at once; the third waits for the first worker to be free."""
    pool = FakePool(2, manual=True)
    scheduler = await make_scheduler(pool, max_batch=1)
    gens = [await scheduler.submit(req(), JobOrigin(user_id=u)) for u in (1, 2, 3)]
    await scheduler.start()
    pending = await pool.wait_pending(2)
    assert sorted(ids(b).pop() for b in pending.values()) == [gens[0].id, gens[1].id]
    assert scheduler.running_ids == {gens[0].id, gens[1].id}
    assert scheduler.position(gens[2].id) == 1
    assert {i.name: i.gen_ids for i in scheduler.workers_info()} == {
        name: (int(batch[0].job_id),) for name, batch in pending.items()
    }
    first = next(name for name, b in pending.items() if ids(b) == {gens[0].id})
    pool.slot(first).release()
    await wait_until(lambda: ids(pool.pending().get(first, [])) == {gens[2].id})
    for slot in pool.members:
        slot.release()
    await scheduler.idle()
    for gen in gens:
        assert (await repos.generations.get(gen.id)).status == "done"


async def test_a_crashed_workers_batch_is_retried_first_on_any_worker(repos, make_scheduler):
    """A crash gives the batch to the next free worker, ahead of waiting jobs; it ends once."""
    pool = FakePool(2, manual=True, manual_restart=True)
    scheduler = await make_scheduler(pool, max_batch=1)
    a, b, c = [await scheduler.submit(req(), JobOrigin(user_id=u)) for u in (1, 2, 3)]
    await scheduler.start()
    pending = await pool.wait_pending(2)
    on_a = next(name for name, batch in pending.items() if ids(batch) == {a.id})
    other = next(name for name in pending if name != on_a)
    pool.slot(on_a).release("crash")
    await wait_until(lambda: pool.restarts == [on_a])
    assert scheduler.running_ids == {a.id, b.id}  # waiting for a worker, still running
    assert {s.name: s.state for s in pool.statuses()}[on_a] == WorkerState.LOADING
    pool.slot(other).release()  # b is done: its worker takes a's retry, not c
    await wait_until(lambda: ids(pool.pending().get(other, [])) == {a.id})
    assert scheduler.position(c.id) == 1
    pool.revive(on_a)
    await wait_until(lambda: ids(pool.pending().get(on_a, [])) == {c.id})
    for slot in pool.members:
        slot.release()
    await scheduler.idle()
    done = await repos.generations.get(a.id)
    assert done.status == "done" and done.attempts == 2
    assert (await repos.generations.get(c.id)).status == "done"


async def test_a_second_crash_fails_the_batch(repos, make_scheduler):
    """Two crashes in a row: the jobs fail with the crashed-twice message; the pool goes on."""
    pool = FakePool(2, manual=True)
    scheduler = await make_scheduler(pool, max_batch=2)
    a = await scheduler.submit(req(), JobOrigin(user_id=1))
    await scheduler.start()
    (first,) = (await pool.wait_pending(1)).keys()
    pool.slot(first).release("crash")
    await wait_until(lambda: len(pool.restarts) == 1 and pool.pending())
    (second,) = pool.pending().keys()
    pool.slot(second).release("crash")
    await scheduler.idle()
    failed = await repos.generations.get(a.id)
    assert failed.status == "failed" and failed.error == CRASHED_TWICE
    b = await scheduler.submit(req(), JobOrigin(user_id=2))
    (third,) = (await pool.wait_pending(1)).keys()
    pool.slot(third).release()
    await scheduler.idle()
    assert (await repos.generations.get(b.id)).status == "done"


async def test_cancel_reaches_the_worker_that_runs_the_job(repos, make_scheduler):
    """Cancelling the job on worker 2 tells worker 2, and only it."""
    pool = FakePool(2, manual=True)
    scheduler = await make_scheduler(pool, max_batch=1)
    a, b = [await scheduler.submit(req(), JobOrigin(user_id=u)) for u in (1, 2)]
    await scheduler.start()
    pending = await pool.wait_pending(2)
    on_b = next(name for name, batch in pending.items() if ids(batch) == {b.id})
    assert scheduler.worker_of(b.id).name == on_b
    assert await scheduler.cancel(b.id, user_id=2)
    assert pool.slot(on_b).cancelled == {str(b.id)}
    assert all(not s.cancelled for s in pool.members if s.name != on_b)
    for slot in pool.members:
        slot.release()
    await scheduler.idle()
    assert (await repos.generations.get(b.id)).status == "cancelled"
    assert (await repos.generations.get(a.id)).status == "done"


async def test_a_job_cancelled_while_its_retry_waits_is_not_run_again(repos, make_scheduler):
    """Cancelled between a crash and the retry: it ends cancelled and no worker sees it."""
    pool = FakePool(1, manual=True, manual_restart=True)
    scheduler = await make_scheduler(pool, max_batch=1)
    a = await scheduler.submit(req(), JobOrigin(user_id=1))
    await scheduler.start()
    await pool.wait_pending(1)
    pool.slot("fake1").release("crash")
    await wait_until(lambda: pool.restarts == ["fake1"])
    assert await scheduler.cancel(a.id)
    await scheduler.idle()
    assert (await repos.generations.get(a.id)).status == "cancelled"
    assert len(pool.slot("fake1").calls) == 1


async def test_pause_covers_the_pool(repos, make_scheduler):
    """Paused: running batches on every worker finish; no worker starts a new one."""
    pool = FakePool(2, manual=True)
    scheduler = await make_scheduler(pool, max_batch=1)
    gens = [await scheduler.submit(req(), JobOrigin(user_id=u)) for u in (1, 2, 3, 4)]
    await scheduler.start()
    await pool.wait_pending(2)
    await scheduler.pause()
    for slot in pool.members:
        slot.release()
    await scheduler.idle()
    statuses = [(await repos.generations.get(g.id)).status for g in gens]
    assert sorted(statuses) == ["done", "done", "queued", "queued"]
    assert sum(len(s.calls) for s in pool.members) == 2
    assert all(s.state == WorkerState.IDLE for s in pool.statuses())


async def test_eta_uses_the_combined_speed_of_the_workers_that_are_up(make_scheduler):
    """Two workers finish the queue twice as fast; a job never beats its own run time; a
    worker that is down does not count."""
    pool = FakePool(2)
    scheduler = await make_scheduler(pool, initial_cost_per_second=64 * 64 * 4)  # 1 job/s each
    gens = [await scheduler.submit(req(), JobOrigin(user_id=u)) for u in (1, 2, 3, 4)]
    assert scheduler.pool_cost_per_second == pytest.approx(2 * 64 * 64 * 4)
    assert [scheduler.eta_seconds(g.id) for g in gens] == pytest.approx([1.0, 1.0, 1.5, 2.0])
    assert [j.eta_seconds for j in scheduler.jobs()] == pytest.approx([1.0, 1.0, 1.5, 2.0])
    pool._down("fake2", "the GPU fell off the bus")
    assert scheduler.eta_seconds(gens[3].id) == pytest.approx(4.0)
    await scheduler.start()
    await scheduler.idle()
    assert set(scheduler._rates) == {"fake1"}  # measured per worker


async def test_worker_changes_reach_the_listeners(repos, make_scheduler):
    """A crash and a restart arrive as worker events, with every worker's state."""
    pool = FakePool(1, manual=True, manual_restart=True)
    scheduler = await make_scheduler(pool, max_batch=1)
    seen = []

    class Workers(Recorder):
        async def on_worker(self, worker, workers):
            seen.append((worker.name, worker.state, [(w.name, w.state) for w in workers]))

    scheduler.add_listener(Workers())
    await scheduler.submit(req(), JobOrigin(user_id=1))
    await scheduler.start()
    (name,) = (await pool.wait_pending(1)).keys()
    pool.slot(name).release("crash")
    await wait_until(lambda: pool.restarts)
    pool.revive(name)
    await wait_until(lambda: pool.pending())
    pool.slot(name).release()
    await scheduler.idle()
    states = [state for worker, state, _ in seen if worker == name]
    assert states[:4] == ["running", "loading", "idle", "running"]
    assert states[-1] == "idle"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(st.sampled_from([2, 4, 8]), min_size=3, max_size=3),
    workers=st.integers(2, 3),
    seed=st.integers(0, 1000),
)
def test_fairness_bounds_hold_across_the_pool(tmp_path_factory, steps, workers, seed):
    """Three members with long backlogs of different costs: whichever worker frees up first,
    each member's served cost stays within one job (plus the quantum) of an equal share."""
    from bot.db import Database

    async def scenario():
        folder = tmp_path_factory.mktemp("fair")
        async with Database.open(folder / "easel.sqlite3") as db:
            started: list[tuple[int, int]] = []  # (user, cost) in the order batches started
            pool = FakePool(workers, manual=True)
            scheduler = Scheduler(Repositories.on(db), pool, max_batch=1)
            owner = {}
            for user, n in enumerate(steps):
                for _ in range(12):
                    gen = await scheduler.submit(req(steps=n), JobOrigin(user_id=user))
                    owner[gen.id] = (user, gen.request.cost)
            for slot in pool.members:
                slot.on_batch = lambda batch: started.extend(owner[int(r.job_id)] for r in batch)
            max_cost = max(cost for _, cost in owner.values())
            rng = random.Random(seed)
            await scheduler.start()
            try:
                while all(scheduler.waiting_for(u) for u in range(3)):
                    await pool.wait_pending(workers)
                    served: dict[int, int] = {}
                    for user, cost in started:
                        served[user] = served.get(user, 0) + cost
                    total = sum(served.values())
                    # Every popped batch is on a worker now: the pops are the DRR order, so
                    # the single-queue bound (one job's cost, quantum 1) holds for the pool.
                    for user in range(3):
                        assert abs(served.get(user, 0) - total / 3) <= max_cost
                    rng.choice(pool.members).release()
                    await asyncio.sleep(0)
            finally:
                await scheduler.stop()

    asyncio.run(scenario())


# -- the crash-and-restart property, with a pool and worker crashes ---------------------------


class PoolQueueMachine(QueueMachine):
    """The same property as QueueMachine (every job ends exactly once, the store and memory
    agree after any crash of the bot), with two workers running batches side by side and
    worker crashes that retry a batch on any worker."""

    def boot(self):
        from bot.db import Database
        from tests.bot.queue.fakes import admission_for

        self.database = self.run(Database.connect(self.db, synchronous="OFF"))
        repos = Repositories.on(self.database)
        self.pool = FakePool(2, manual=True, on_batch=self.check_batch)
        self.scheduler = Scheduler(repos, self.pool, max_batch=3)
        self.admission = admission_for(repos, self.scheduler, max_waiting_per_user=4)
        self.run(self.scheduler.recover())
        self.run(self.scheduler.start())
        self.settle()

    @property
    def worker(self):
        """The first worker holding a batch (QueueMachine's rules use one `worker`)."""
        held = [s for s in self.pool.members if s.pending is not None]
        return held[0] if held else self.pool.members[0]

    def settle(self):
        async def wait():
            for _ in range(5000):
                s = self.scheduler
                held = {i for batch in self.pool.pending().values() for i in ids(batch)}
                idle = any(st.state == "idle" for st in self.pool.statuses())
                can_start = s.waiting_count and not s.paused and idle
                if s.running_ids == held and not can_start:
                    await asyncio.sleep(0)
                    held = {i for batch in self.pool.pending().values() for i in ids(batch)}
                    if s.running_ids == held:
                        return
                await asyncio.sleep(0.001)
            raise AssertionError(
                f"the scheduler did not settle: running {s.running_ids}, held by workers "
                f"{held}, workers {[st.state for st in self.pool.statuses()]}"
            )

        self.run(wait())

    @precondition(lambda self: self.pool.pending())
    @rule(
        data=st.data(),
        outcome=st.sampled_from(["ok", "ok", "ok", "error", "cancel", "raise", "crash"]),
    )
    def complete_one(self, data, outcome):
        """One of the busy workers answers (or dies)."""
        name = data.draw(st.sampled_from(sorted(self.pool.pending())))
        self.pool.slot(name).release(outcome)
        self.settle()

    def teardown(self):
        try:
            if self.scheduler is None:
                return
            self.run(self.scheduler.resume())
            self.settle()
            for _ in range(200):
                if not self.pool.pending() and not self.scheduler.waiting_count:
                    break
                for slot in self.pool.members:
                    if slot.pending is not None:
                        slot.release("ok")
                self.settle()
            self.finals_end_once()
        finally:
            # Stopped even when a check failed, so no batch task outlives its event loop.
            if self.scheduler is not None:
                self.run(self.scheduler.stop())
                self.run(self.database.close())
            self.cleanup()


PoolQueueMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPoolCrashAndRestart = PoolQueueMachine.TestCase
