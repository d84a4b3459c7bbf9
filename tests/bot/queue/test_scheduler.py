"""The scheduler: events, batching, cancel, ETA, pause, recovery, and a crash-and-restart
property over the database."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from bot.db import Database, Repositories
from bot.domain import JobOrigin
from bot.queue import QuietListener, Scheduler
from bot.services.admission import Refused
from tests.bot.queue.exactly_once import FINALS_DDL, finals
from tests.bot.queue.fakes import FakeWorker, Recorder, admission_for, req

# -- the scheduler ----------------------------------------------------------------------------


async def test_job_runs_and_events_arrive_in_order(repos, make_scheduler):
    """A submitted job is queued, started, reported and finished, store first every time."""
    scheduler = await make_scheduler()
    recorder = Recorder(repos)
    scheduler.add_listener(recorder)
    gen = await scheduler.submit(req(count=2), JobOrigin(user_id=1, guild_id=2, channel_id=3))
    assert gen.status == "queued" and scheduler.position(gen.id) == 1
    await scheduler.start()
    await scheduler.idle()
    kinds = [e[0] for e in recorder.events]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "finished"
    assert ("progress", gen.id, 2, 2) in recorder.events
    done = await repos.generations.get(gen.id)
    assert done.status == "done" and len(done.images) == 2
    assert all(image.path.is_file() for image in done.images)
    assert scheduler.position(gen.id) is None and scheduler.eta_seconds(gen.id) is None


async def test_running_is_recorded_before_the_worker_runs(repos, make_scheduler):
    """The store says `running` by the time the worker sees the batch."""
    seen = []

    def check(batch):
        with sqlite3.connect(repos.db.path) as conn:
            for request in batch:
                row = conn.execute(
                    "SELECT status FROM generations WHERE id = ?", (int(request.job_id),)
                ).fetchone()
                seen.append(row[0])

    scheduler = await make_scheduler(FakeWorker(on_batch=check))
    await scheduler.submit(req(), JobOrigin(user_id=1))
    await scheduler.start()
    await scheduler.idle()
    assert seen == ["running"]


async def test_compatible_jobs_share_one_worker_call(repos, make_scheduler):
    """Jobs with the same model, size, steps, sampler and guidance run as one batch."""
    worker = FakeWorker()
    scheduler = await make_scheduler(worker, max_batch=3)
    for user in range(4):
        await scheduler.submit(req(), JobOrigin(user_id=user))
    await scheduler.submit(req(steps=8), JobOrigin(user_id=9))
    await scheduler.start()
    await scheduler.idle()
    assert [len(call) for call in worker.calls] == [3, 1, 1]
    assert {call[0].steps for call in worker.calls[1:]} == {4, 8}


async def test_cancel_queued_and_running_jobs(repos, make_scheduler):
    """A queued job is removed at once; a running one is stopped through the worker."""
    worker = FakeWorker(manual=True)
    scheduler = await make_scheduler(worker, max_batch=1)
    recorder = Recorder(repos)
    scheduler.add_listener(recorder)
    first = await scheduler.submit(req(), JobOrigin(user_id=1))
    second = await scheduler.submit(req(), JobOrigin(user_id=1))
    await scheduler.start()
    await worker.wait_pending()
    assert scheduler.position(first.id) == 0 and scheduler.position(second.id) == 1
    assert not await scheduler.cancel(second.id, user_id=2)  # not theirs
    assert await scheduler.cancel(second.id, user_id=1)
    assert (await repos.generations.get(second.id)).status == "cancelled"
    assert not await scheduler.cancel(second.id)
    assert await scheduler.cancel(first.id)
    assert worker.cancelled == {str(first.id)}
    worker.release()
    await scheduler.idle()
    assert (await repos.generations.get(first.id)).status == "cancelled"
    assert recorder.of("finished") == [
        ("finished", second.id, "cancelled"),
        ("finished", first.id, "cancelled"),
    ]


async def test_cancel_user_cancels_all_their_jobs(repos, make_scheduler):
    """After a ban, a member's waiting jobs in that server are cancelled."""
    scheduler = await make_scheduler()
    mine = [await scheduler.submit(req(), JobOrigin(user_id=1, guild_id=g)) for g in (5, 5, 6)]
    other = await scheduler.submit(req(), JobOrigin(user_id=2, guild_id=5))
    cancelled = await scheduler.cancel_user(1, guild_id=5)
    assert cancelled == [mine[0].id, mine[1].id]
    assert [j.gen_id for j in scheduler.user_jobs(1)] == [mine[2].id]
    assert [j.gen_id for j in scheduler.user_jobs(2)] == [other.id]


async def test_a_failing_listener_does_not_stop_the_dispatcher(repos, make_scheduler, caplog):
    """An exception in a listener is logged; the jobs still run and others still hear."""

    class Broken(QuietListener):
        async def on_started(self, gen):
            raise ValueError("listener bug")

        async def on_finished(self, gen, result):
            raise RuntimeError("discord is down")

    scheduler = await make_scheduler()
    recorder = Recorder()
    scheduler.add_listener(Broken())
    scheduler.add_listener(recorder)
    await scheduler.start()
    gens = [await scheduler.submit(req(), JobOrigin(user_id=i)) for i in range(3)]
    await scheduler.idle()
    assert [e[1] for e in recorder.of("finished")] == [g.id for g in gens]
    assert "listener bug" in caplog.text and "discord is down" in caplog.text


async def test_worker_exception_fails_the_batch_clearly(repos, make_scheduler):
    """An unexpected worker error fails that batch's jobs with a message; the next runs."""
    worker = FakeWorker()
    worker.fail_with = RuntimeError("pipe broke")
    scheduler = await make_scheduler(worker, max_batch=2)
    a = await scheduler.submit(req(), JobOrigin(user_id=1))
    b = await scheduler.submit(req(), JobOrigin(user_id=2))
    await scheduler.start()
    await scheduler.idle()
    for gen_id in (a.id, b.id):
        failed = await repos.generations.get(gen_id)
        assert failed.status == "failed" and "pipe broke" in failed.error
    worker.fail_with = None
    c = await scheduler.submit(req(), JobOrigin(user_id=3))
    await scheduler.idle()
    assert (await repos.generations.get(c.id)).status == "done"


async def test_missing_result_fails_that_job_only(repos, make_scheduler):
    """A result the worker forgot fails its job; the others are recorded."""
    worker = FakeWorker()
    worker.drop_last = True
    scheduler = await make_scheduler(worker, max_batch=2)
    a = await scheduler.submit(req(), JobOrigin(user_id=1))
    b = await scheduler.submit(req(), JobOrigin(user_id=2))
    await scheduler.start()
    await scheduler.idle()
    assert (await repos.generations.get(a.id)).status == "done"
    assert "no result" in (await repos.generations.get(b.id)).error


async def test_positions_and_eta(make_scheduler):
    """Positions follow the fair order; ETAs grow along it and follow the measured speed."""
    scheduler = await make_scheduler(initial_cost_per_second=64 * 64 * 4)  # one job per second
    heavy = [await scheduler.submit(req(), JobOrigin(user_id=1)) for _ in range(3)]
    light = await scheduler.submit(req(), JobOrigin(user_id=2))
    assert [scheduler.position(g.id) for g in (*heavy, light)] == [1, 3, 4, 2]
    assert scheduler.eta_seconds(heavy[0].id) == pytest.approx(1.0)
    assert scheduler.eta_seconds(light.id) == pytest.approx(2.0)
    assert scheduler.eta_seconds(heavy[2].id) == pytest.approx(4.0)
    jobs = scheduler.user_jobs(1)
    assert [(j.gen_id, j.status, j.position) for j in jobs] == [
        (heavy[0].id, "queued", 1),
        (heavy[1].id, "queued", 3),
        (heavy[2].id, "queued", 4),
    ]
    assert scheduler.waiting_count == 4
    before = scheduler.cost_per_second
    await scheduler.start()
    await scheduler.idle()
    assert scheduler.cost_per_second != before  # measured: the fake worker is very fast


async def test_pause_holds_jobs_and_survives_a_restart(repos, make_scheduler):
    """Paused: waiting jobs wait, new requests are refused; the switch is durable."""
    scheduler = await make_scheduler()
    gen = await scheduler.submit(req(), JobOrigin(user_id=1))
    await scheduler.pause()
    await scheduler.start()
    await scheduler.idle()
    assert (await repos.generations.get(gen.id)).status == "queued"
    await scheduler.stop()
    again = await make_scheduler()
    assert await again.recover() == [gen.id]
    assert again.paused
    await again.start()
    await again.resume()
    await again.idle()
    assert (await repos.generations.get(gen.id)).status == "done"


async def test_stop_mid_batch_then_recover_runs_it_again(repos, make_scheduler):
    """Stopping while a batch runs leaves it `running`; recovery runs it again, once."""
    worker = FakeWorker(manual=True)
    scheduler = await make_scheduler(worker, max_batch=1)
    jobs = [await scheduler.submit(req(prompt=f"p{i}"), JobOrigin(user_id=i % 2)) for i in range(4)]
    await scheduler.start()
    await worker.wait_pending()
    worker.release()
    running_id = int((await worker.wait_pending(not_job=str(jobs[0].id)))[0].job_id)
    await scheduler.stop()
    assert (await repos.generations.get(running_id)).status == "running"
    assert (await repos.generations.get(jobs[0].id)).status == "done"
    fresh = FakeWorker()
    again = await make_scheduler(fresh)
    recovered = await again.recover()
    assert jobs[0].id not in recovered and running_id in recovered
    assert sorted(recovered) == sorted(j.id for j in jobs[1:])
    await again.start()
    await again.idle()
    assert {(await repos.generations.get(j.id)).status for j in jobs} == {"done"}
    assert str(jobs[0].id) not in [r.job_id for call in fresh.calls for r in call]


async def test_recovery_redelivers_undelivered_results(repos, make_scheduler):
    """A result recorded but never posted goes to the listeners again after a restart."""
    scheduler = await make_scheduler()
    await scheduler.start()
    posted = await scheduler.submit(req(), JobOrigin(user_id=1))
    lost = await scheduler.submit(req(), JobOrigin(user_id=2))
    await scheduler.idle()
    await repos.generations.mark_delivered(posted.id, channel_id=1, message_id=2)
    await scheduler.stop()
    again = await make_scheduler()
    recorder = Recorder()
    again.add_listener(recorder)
    assert await again.recover() == []
    await again.start()
    await again.idle()
    assert recorder.of("finished") == [("finished", lost.id, "done")]


async def test_a_job_that_keeps_killing_the_bot_is_failed(repos, make_scheduler):
    """A job interrupted `max_runs` times is failed on recovery instead of retried forever."""
    gen = await repos.generations.create(req(), JobOrigin(user_id=1))
    for _ in range(3):
        await repos.generations.mark_running([gen.id])
        await repos.generations.requeue([gen.id])
    await repos.generations.mark_running([gen.id])
    scheduler = await make_scheduler(max_runs=3)
    assert await scheduler.recover() == []
    failed = await repos.generations.get(gen.id)
    assert failed.status == "failed" and "interrupted 4 times" in failed.error


async def test_recovered_vary_job_reads_its_source_from_disk(repos, make_scheduler):
    """After a restart, a vary job gets its source image from the parent's file."""
    worker = FakeWorker()
    scheduler = await make_scheduler(worker)
    await scheduler.start()
    parent = await scheduler.submit(req(), JobOrigin(user_id=1))
    await scheduler.idle()
    await scheduler.stop()
    source = (await repos.generations.get(parent.id)).images[0].path.read_bytes()
    await repos.generations.create(
        req(mode="img2img", init_image=source, strength=0.5),
        JobOrigin(user_id=2, kind="vary", parent_id=parent.id, parent_image_index=0),
    )
    again = await make_scheduler(worker)
    await again.recover()
    await again.start()
    await again.idle()
    vary_request = worker.calls[-1][0]
    assert vary_request.mode == "img2img" and vary_request.init_image == source


async def test_store_failure_mid_batch_puts_the_jobs_back(repos, make_scheduler, monkeypatch):
    """If a result cannot be written, the job goes back to the queue and runs again."""
    worker = FakeWorker()
    scheduler = await make_scheduler(worker, max_batch=1)
    original = repos.generations.save_result
    failures = []

    async def flaky(gen_id, result):
        if not failures:
            failures.append(gen_id)
            raise sqlite3.OperationalError("disk I/O error")
        return await original(gen_id, result)

    monkeypatch.setattr(repos.generations, "save_result", flaky)
    monkeypatch.setattr(asyncio, "sleep", _fast_sleep(asyncio.sleep))
    gen = await scheduler.submit(req(), JobOrigin(user_id=1))
    await scheduler.start()
    await scheduler.idle()
    assert failures == [gen.id]
    assert len(worker.calls) == 2
    assert (await repos.generations.get(gen.id)).status == "done"


def _fast_sleep(real_sleep):
    async def sleep(seconds, result=None):
        return await real_sleep(min(seconds, 0.01), result)

    return sleep


async def test_a_request_without_cost_is_rejected_before_logging(repos, make_scheduler):
    """A zero-sized request never reaches the log or the queue."""
    scheduler = await make_scheduler()
    with pytest.raises(ValueError):
        await scheduler.submit(req(count=0), JobOrigin(user_id=1))
    assert await repos.history.count_log() == 0 and scheduler.waiting_count == 0


# -- crash-and-restart property ---------------------------------------------------------------


class QueueMachine(RuleBasedStateMachine):
    """Random enqueue / cancel / complete / pause / crash-and-restart against a temp database.

    A trigger in the test database counts every move of a job into done, failed or cancelled,
    inside the same transaction, across all crashes.
    """

    def __init__(self):
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.folder = Path(tempfile.mkdtemp(prefix="easel-queue-"))
        self.db = self.folder / "easel.sqlite3"
        self.accepted: set[int] = set()
        self.handed_to_worker_after_final: list[int] = []
        self.scheduler: Scheduler | None = None
        self.database: Database | None = None

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    @initialize()
    def boot_first(self):
        self.boot()
        with sqlite3.connect(self.db) as conn:
            conn.executescript(FINALS_DDL)

    def boot(self):
        self.database = self.run(Database.connect(self.db, synchronous="OFF"))
        repos = Repositories.on(self.database)
        self.worker = FakeWorker(manual=True, on_batch=self.check_batch)
        self.scheduler = Scheduler(repos, self.worker, max_batch=3)
        self.admission = admission_for(repos, self.scheduler, max_waiting_per_user=4)
        self.run(self.scheduler.recover())
        self.run(self.scheduler.start())
        self.settle()

    def finals(self) -> Counter:
        return finals(self.db)

    def statuses(self) -> dict[int, str]:
        with sqlite3.connect(self.db) as conn:
            return dict(conn.execute("SELECT id, status FROM generations"))

    def check_batch(self, batch):
        finals = self.finals()
        for request in batch:
            if finals[int(request.job_id)]:
                self.handed_to_worker_after_final.append(int(request.job_id))

    def settle(self):
        async def wait():
            for _ in range(5000):
                s = self.scheduler
                pending = self.worker.pending
                if pending is not None and s.busy:
                    if s.running_ids == {int(r.job_id) for r in pending[0]}:
                        return
                elif not s.busy and (s.waiting_count == 0 or s.paused):
                    await asyncio.sleep(0)
                    if not s.busy:
                        return
                await asyncio.sleep(0.001)
            raise AssertionError("the scheduler did not settle")

        self.run(wait())

    @rule(user=st.integers(0, 3), steps=st.sampled_from([2, 4]), count=st.integers(1, 2))
    def submit(self, user, steps, count):
        try:
            gen = self.run(
                self.admission.admit(req(steps=steps, count=count), JobOrigin(user_id=user))
            )
        except Refused as refused:
            assert refused.reason in ("over_cap", "paused")
        else:
            self.accepted.add(gen.id)
        self.settle()

    @precondition(lambda self: self.accepted)
    @rule(data=st.data(), as_owner=st.booleans())
    def cancel(self, data, as_owner):
        gen_id = data.draw(st.sampled_from(sorted(self.accepted)))
        self.run(self.scheduler.cancel(gen_id, user_id=None if as_owner else 12345))
        self.settle()

    @precondition(lambda self: self.worker.pending is not None)
    @rule(outcome=st.sampled_from(["ok", "ok", "ok", "error", "cancel", "raise", "partial"]))
    def complete(self, outcome):
        self.worker.release(outcome)
        self.settle()

    @rule(roll=st.integers(0, 3))
    def pause_or_resume(self, roll):
        """Pause now and then (one roll in four); resume when paused."""
        if self.scheduler.paused:
            self.run(self.scheduler.resume())
        elif roll == 0:
            self.run(self.scheduler.pause())
        self.settle()

    @rule(finish_first=st.booleans(), ticks=st.integers(0, 6))
    def crash_and_restart(self, finish_first, ticks):
        """Drop the scheduler and its memory at some point, reopen the store, recover."""
        if finish_first and self.worker.pending is not None:
            self.worker.release("ok")

        async def crash():
            for _ in range(ticks):
                await asyncio.sleep(0)
            await self.scheduler.stop()  # no grace: nothing more is written
            await self.database.close()

        self.run(crash())
        self.boot()

    @invariant()
    def store_and_memory_agree(self):
        if self.scheduler is None:
            return
        statuses = self.statuses()
        queued = {i for i, s in statuses.items() if s == "queued"}
        running = {i for i, s in statuses.items() if s == "running"}
        assert queued == self.scheduler.queue.ids()
        assert running == self.scheduler.running_ids
        assert self.accepted <= set(statuses)
        assert max(self.finals().values(), default=0) <= 1
        assert not self.handed_to_worker_after_final

    def teardown(self):
        try:
            if self.scheduler is None:
                return
            self.run(self.scheduler.resume())
            self.settle()
            for _ in range(200):
                if self.worker.pending is None and not self.scheduler.waiting_count:
                    break
                if self.worker.pending is not None:
                    self.worker.release("ok")
                self.settle()
            self.finals_end_once()
            self.run(self.scheduler.stop())
            self.run(self.database.close())
        finally:
            self.cleanup()

    def finals_end_once(self):
        """Every accepted job ended, exactly once, and no worker saw a job after its end."""
        statuses = self.statuses()
        finals = self.finals()
        for gen_id in self.accepted:
            assert statuses[gen_id] in ("done", "failed", "cancelled"), (gen_id, statuses)
            assert finals[gen_id] == 1, (gen_id, finals[gen_id])
        assert not self.handed_to_worker_after_final

    def cleanup(self):
        self.loop.close()
        shutil.rmtree(self.folder, ignore_errors=True)


QueueMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCrashAndRestart = QueueMachine.TestCase
