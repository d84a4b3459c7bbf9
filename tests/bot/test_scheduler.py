"""The fair queue and the scheduler: fairness, batching, admission, cancel, ETA, recovery."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from bot.scheduler import FairQueue, QueueEntry, QueueRefused, Scheduler
from bot.store import Store
from inference.request import GeneratedImage, GenerationRequest, GenerationResult
from tests.bot.exactly_once import FINALS_DDL, finals

# -- helpers ----------------------------------------------------------------------------------


def req(prompt: str = "a fox", **overrides) -> GenerationRequest:
    values = dict(prompt=prompt, width=64, height=64, steps=4, seed=1)
    values.update(overrides)
    return GenerationRequest(**values)


def entry(gen_id: int, user_id: int, cost: int = 100, key: object = "k") -> QueueEntry:
    request = req(job_id=str(gen_id))
    return QueueEntry(gen_id, user_id, request, cost, (key,))


def ok_result(request: GenerationRequest) -> GenerationResult:
    seeds = request.image_seeds()
    images = [
        GeneratedImage(
            png=b"\x89PNG" + request.job_id.encode() + bytes([i]),
            seed=seed,
            index=i,
            width=request.width,
            height=request.height,
        )
        for i, seed in enumerate(seeds)
    ]
    return GenerationResult(job_id=request.job_id, images=images, timings={"inference": 0.01})


class FakeWorker:
    """Answers at once (or when released, with `manual=True`); honours cancel like the real one."""

    def __init__(self, *, manual: bool = False, on_batch=None):
        self.manual = manual
        self.on_batch = on_batch
        self.calls: list[list[GenerationRequest]] = []
        self.cancelled: set[str] = set()
        self.pending: tuple[list[GenerationRequest], asyncio.Future] | None = None
        self.fail_with: Exception | None = None
        self.drop_last = False
        self.arrived = asyncio.Event()

    async def run(self, batch, on_progress=None):
        self.calls.append(list(batch))
        if self.on_batch is not None:
            self.on_batch(batch)
        if on_progress is not None:
            for step in (1, 2):
                for request in batch:
                    on_progress(request.job_id, step, 2)
        outcome = "ok"
        if self.manual:
            future = asyncio.get_running_loop().create_future()
            self.pending = (list(batch), future)
            self.arrived.set()
            try:
                outcome = await future
            finally:
                self.pending = None
        else:
            await asyncio.sleep(0)
        if self.fail_with is not None or outcome == "raise":
            raise self.fail_with or RuntimeError("CUDA error: an illegal memory access")
        results = []
        for request in batch:
            if request.job_id in self.cancelled or outcome == "cancel":
                results.append(GenerationResult(job_id=request.job_id, cancelled=True))
            elif outcome == "error":
                results.append(GenerationResult(job_id=request.job_id, error="The worker crashed."))
            else:
                results.append(ok_result(request))
        if self.drop_last or outcome == "partial":
            results = results[:-1]
        return results

    def cancel(self, job_id: str) -> None:
        self.cancelled.add(job_id)

    async def wait_pending(self, *, not_job: str | None = None) -> list[GenerationRequest]:
        """Wait until a batch is held (one without job `not_job`); return it."""
        while self.pending is None or not_job in {r.job_id for r in self.pending[0]}:
            self.arrived.clear()
            await self.arrived.wait()
        return self.pending[0]

    def release(self, outcome: str = "ok") -> None:
        assert self.pending is not None
        self.pending[1].set_result(outcome)


class Recorder:
    """A listener that records every event, and checks the store recorded the change first."""

    def __init__(self, store: Store | None = None):
        self.store = store
        self.events: list[tuple] = []

    def on_queued(self, gen):
        self.events.append(("queued", gen.id))

    async def on_started(self, gen):
        self.events.append(("started", gen.id))

    def on_progress(self, gen_id, step, total):
        self.events.append(("progress", gen_id, step, total))

    async def on_finished(self, gen, result):
        if self.store is not None:
            stored = await self.store.get(gen.id)
            assert stored.status == gen.status and stored.is_final
        self.events.append(("finished", gen.id, gen.status))

    def of(self, kind: str) -> list:
        return [e for e in self.events if e[0] == kind]


@pytest.fixture
async def store(tmp_path):
    async with Store.open(tmp_path / "easel.sqlite3") as opened:
        yield opened


@pytest.fixture
async def make_scheduler(store):
    made: list[Scheduler] = []

    async def make(worker=None, **options) -> Scheduler:
        scheduler = Scheduler(store, worker or FakeWorker(), **options)
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        await scheduler.stop()


# -- the fair queue (pure) --------------------------------------------------------------------


def drain(queue: FairQueue, max_size: int = 1) -> list[list[int]]:
    batches = []
    while queue:
        batches.append([e.gen_id for e in queue.pop_batch(max_size)])
    return batches


def test_round_robin_with_equal_costs():
    """Equal jobs from three users alternate; each user's own jobs stay in order."""
    queue = FairQueue()
    ids = iter(range(100))
    for user, n in ((1, 3), (2, 2), (3, 1)):
        for _ in range(n):
            queue.push(entry(next(ids), user))
    order = [e.gen_id for e in queue.order()]
    assert order == [0, 3, 5, 1, 4, 2]
    assert [b[0] for b in drain(queue)] == order


def test_expensive_jobs_wait_proportionally():
    """A job costing 4 units waits while a user with 1-unit jobs runs about four of them."""
    queue = FairQueue()
    for i in range(8):
        queue.push(entry(i, user_id=1, cost=100))
    queue.push(entry(100, user_id=2, cost=400))
    served = [b[0] for b in drain(queue)]
    assert 3 <= served.index(100) <= 5


@settings(max_examples=60, deadline=None)
@given(
    costs=st.lists(st.lists(st.integers(1, 50), min_size=30, max_size=30), min_size=2, max_size=6),
    quantum=st.sampled_from([1, 1, 7, 50]),
)
def test_backlogged_users_get_an_equal_share_within_one_job(costs, quantum):
    """With N users backlogged, each one's served cost stays within one job's cost (plus the
    quantum, which defaults to 1) of an equal share, after every single job."""
    queue = FairQueue(quantum)
    gen_id = 0
    for user, user_costs in enumerate(costs):
        for cost in user_costs:
            queue.push(entry(gen_id, user, cost))
            gen_id += 1
    max_cost = max(max(c) for c in costs)
    n = len(costs)
    while all(queue.waiting_for(user) for user in range(n)):
        queue.pop_batch(1)
        total = sum(queue.served.values())
        for user in range(n):
            assert abs(queue.served.get(user, 0) - total / n) <= max_cost + quantum - 1


@settings(max_examples=40, deadline=None)
@given(
    heavy_cost=st.integers(1, 1000),
    already_served=st.integers(0, 19),
    batch=st.integers(1, 4),
    compatible=st.booleans(),
)
def test_newcomer_with_one_job_starts_within_one_batch_slot(
    heavy_cost, already_served, batch, compatible
):
    """A member sending one job while another has 20 waiting starts within one batch slot:
    in the next batch if the other has already started, else right after the other's first."""
    queue = FairQueue()
    for i in range(20 + already_served):
        queue.push(entry(i, user_id=1, cost=heavy_cost, key="heavy"))
    for _ in range(already_served):
        queue.pop_batch(1)  # the heavy user has been running for a while
    queue.push(entry(999, user_id=2, cost=heavy_cost, key="heavy" if compatible else "light"))
    assert queue.position(999) == (0 if already_served else 1)
    batches = [[e.gen_id for e in queue.pop_batch(batch)] for _ in range(2)]
    slot = next(n for n, ids in enumerate(batches) if 999 in ids)
    if already_served:
        assert slot == 0 and batches[0][0] == 999
    else:
        assert slot <= 1


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("push"), st.integers(0, 4), st.integers(1, 30), st.integers(0, 2)),
            st.tuples(st.just("remove"), st.integers(0, 200)),
            st.tuples(st.just("pop"), st.integers(1, 4)),
        ),
        max_size=80,
    )
)
def test_fair_order_predicts_dispatch_and_keeps_each_users_order(ops):
    """`order()` is exactly what single pops return; batches start with the head, hold only
    compatible jobs, never reorder a user's jobs, and nothing is lost or served twice."""
    queue = FairQueue()
    next_id = 0
    pushed: dict[int, QueueEntry] = {}
    popped: list[int] = []
    removed: list[int] = []
    for op in ops:
        if op[0] == "push":
            e = entry(next_id, op[1], op[2], key=op[3])
            queue.push(e)
            pushed[next_id] = e
            next_id += 1
        elif op[0] == "remove":
            if queue.remove(op[1]) is not None:
                removed.append(op[1])
        else:
            expected_head = queue.order()[0].gen_id if queue else None
            batch = queue.pop_batch(op[1])
            if expected_head is None:
                assert batch == []
                continue
            assert batch[0].gen_id == expected_head
            assert len(batch) <= op[1]
            assert len({e.batch_key for e in batch}) == 1
            popped += [e.gen_id for e in batch]
        assert len(queue) == len(queue.order())
    # Single pops follow the predicted order exactly.
    predicted = [e.gen_id for e in queue.order()]
    positions = [queue.position(i) for i in predicted]
    assert positions == list(range(len(predicted)))
    rest = [b[0] for b in drain(queue, 1)]
    assert rest == predicted
    served = popped + rest
    assert sorted(served + removed) == sorted(pushed)
    assert len(set(served)) == len(served)
    for user in {e.user_id for e in pushed.values()}:
        mine = [i for i in served if pushed[i].user_id == user]
        assert mine == sorted(mine)


def test_batch_takes_compatible_jobs_in_fair_order():
    """The head goes first, then compatible jobs of other users in their fair order."""
    queue = FairQueue()
    queue.push(entry(1, user_id=1, key="a"))
    queue.push(entry(2, user_id=2, key="b"))
    queue.push(entry(3, user_id=3, key="a"))
    queue.push(entry(4, user_id=1, key="a"))
    queue.push(entry(5, user_id=2, key="a"))  # behind user 2's "b" job: must not overtake it
    assert [e.gen_id for e in queue.pop_batch(4)] == [1, 3, 4]
    assert [e.gen_id for e in queue.pop_batch(4)] == [2]
    assert [e.gen_id for e in queue.pop_batch(4)] == [5]


def test_img2img_jobs_are_never_batched_together():
    """Jobs with a source image each get their own pipeline call."""
    queue = FairQueue()
    for i in range(3):
        request = req(mode="img2img", init_image=b"x", job_id=str(i))
        queue.push(QueueEntry.of(i, user_id=i, request=request))
    assert [len(queue.pop_batch(4)) for _ in range(3)] == [1, 1, 1]


# -- the scheduler ----------------------------------------------------------------------------


async def test_job_runs_and_events_arrive_in_order(store, make_scheduler):
    """A submitted job is queued, started, reported and finished, store first every time."""
    scheduler = await make_scheduler()
    recorder = Recorder(store)
    scheduler.add_listener(recorder)
    gen = await scheduler.submit(req(count=2), user_id=1, guild_id=2, channel_id=3)
    assert gen.status == "queued" and scheduler.position(gen.id) == 1
    await scheduler.start()
    await scheduler.idle()
    kinds = [e[0] for e in recorder.events]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "finished"
    assert ("progress", gen.id, 2, 2) in recorder.events
    done = await store.get(gen.id)
    assert done.status == "done" and len(done.images) == 2
    assert all(image.path.is_file() for image in done.images)
    assert scheduler.position(gen.id) is None and scheduler.eta_seconds(gen.id) is None


async def test_running_is_recorded_before_the_worker_runs(store, make_scheduler):
    """The store says `running` by the time the worker sees the batch."""
    seen = []

    def check(batch):
        with sqlite3.connect(store.path) as conn:
            for request in batch:
                row = conn.execute(
                    "SELECT status FROM generations WHERE id = ?", (int(request.job_id),)
                ).fetchone()
                seen.append(row[0])

    scheduler = await make_scheduler(FakeWorker(on_batch=check))
    await scheduler.submit(req(), user_id=1)
    await scheduler.start()
    await scheduler.idle()
    assert seen == ["running"]


async def test_compatible_jobs_share_one_worker_call(store, make_scheduler):
    """Jobs with the same model, size, steps, sampler and guidance run as one batch."""
    worker = FakeWorker()
    scheduler = await make_scheduler(worker, max_batch=3)
    for user in range(4):
        await scheduler.submit(req(), user_id=user)
    await scheduler.submit(req(steps=8), user_id=9)
    await scheduler.start()
    await scheduler.idle()
    assert [len(call) for call in worker.calls] == [3, 1, 1]
    assert {call[0].steps for call in worker.calls[1:]} == {4, 8}


@pytest.mark.parametrize(
    ("options", "prepare", "reason", "fragment"),
    [
        ({}, "pause", "paused", "paused"),
        ({"max_waiting_per_user": 2}, "two_waiting", "over_cap", "2 images waiting"),
        ({"daily_quota": 2}, "two_done", "over_quota", "all 2 of today's requests"),
        ({}, "ban", "banned_user", "banned"),
    ],
)
async def test_refusals_are_explained_and_logged(
    store, make_scheduler, options, prepare, reason, fragment
):
    """Paused queue, waiting cap, daily quota and bans refuse with a sentence and a log row."""
    scheduler = await make_scheduler(**options)
    if prepare == "pause":
        await scheduler.pause()
    elif prepare == "two_waiting":
        await scheduler.submit(req(), user_id=1, guild_id=5)
        await scheduler.submit(req(), user_id=1, guild_id=5)
        await scheduler.submit(req(), user_id=2, guild_id=5)  # others are not capped
    elif prepare == "two_done":
        await scheduler.start()
        for _ in range(2):
            await scheduler.submit(req(), user_id=1, guild_id=5)
        await scheduler.idle()
    else:
        await store.ban(5, 1, by=9, reason="spam")
    with pytest.raises(QueueRefused) as refused:
        await scheduler.submit(req(prompt="one more"), user_id=1, guild_id=5, channel_id=6)
    error = refused.value
    assert error.reason == reason and fragment in error.message
    assert error.message.endswith(".") and str(error) == error.message
    logged = await store.get(error.generation.id)
    assert (logged.status, logged.refusal_reason, logged.prompt) == ("blocked", reason, "one more")
    assert logged.refusal_message == error.message and logged.channel_id == 6


async def test_caps_of_zero_mean_no_limit(make_scheduler):
    """0 disables the waiting cap and the daily quota."""
    scheduler = await make_scheduler(max_waiting_per_user=0, daily_quota=0)
    for _ in range(30):
        await scheduler.submit(req(), user_id=1)
    assert scheduler.waiting_count == 30


async def test_cancel_queued_and_running_jobs(store, make_scheduler):
    """A queued job is removed at once; a running one is stopped through the worker."""
    worker = FakeWorker(manual=True)
    scheduler = await make_scheduler(worker, max_batch=1)
    recorder = Recorder(store)
    scheduler.add_listener(recorder)
    first = await scheduler.submit(req(), user_id=1)
    second = await scheduler.submit(req(), user_id=1)
    await scheduler.start()
    await worker.wait_pending()
    assert scheduler.position(first.id) == 0 and scheduler.position(second.id) == 1
    assert not await scheduler.cancel(second.id, user_id=2)  # not theirs
    assert await scheduler.cancel(second.id, user_id=1)
    assert (await store.get(second.id)).status == "cancelled"
    assert not await scheduler.cancel(second.id)
    assert await scheduler.cancel(first.id)
    assert worker.cancelled == {str(first.id)}
    worker.release()
    await scheduler.idle()
    assert (await store.get(first.id)).status == "cancelled"
    assert recorder.of("finished") == [
        ("finished", second.id, "cancelled"),
        ("finished", first.id, "cancelled"),
    ]


async def test_cancel_user_cancels_all_their_jobs(store, make_scheduler):
    """After a ban, a member's waiting jobs in that server are cancelled."""
    scheduler = await make_scheduler()
    mine = [await scheduler.submit(req(), user_id=1, guild_id=g) for g in (5, 5, 6)]
    other = await scheduler.submit(req(), user_id=2, guild_id=5)
    cancelled = await scheduler.cancel_user(1, guild_id=5)
    assert cancelled == [mine[0].id, mine[1].id]
    assert [j.gen_id for j in scheduler.user_jobs(1)] == [mine[2].id]
    assert [j.gen_id for j in scheduler.user_jobs(2)] == [other.id]


async def test_a_failing_listener_does_not_stop_the_dispatcher(store, make_scheduler, caplog):
    """An exception in a listener is logged; the jobs still run and others still hear."""

    class Broken:
        def on_started(self, gen):
            raise ValueError("listener bug")

        async def on_finished(self, gen, result):
            raise RuntimeError("discord is down")

    scheduler = await make_scheduler()
    recorder = Recorder()
    scheduler.add_listener(Broken())
    scheduler.add_listener(recorder)
    await scheduler.start()
    gens = [await scheduler.submit(req(), user_id=i) for i in range(3)]
    await scheduler.idle()
    assert [e[1] for e in recorder.of("finished")] == [g.id for g in gens]
    assert "listener bug" in caplog.text and "discord is down" in caplog.text


async def test_worker_exception_fails_the_batch_clearly(store, make_scheduler):
    """An unexpected worker error fails that batch's jobs with a message; the next runs."""
    worker = FakeWorker()
    worker.fail_with = RuntimeError("pipe broke")
    scheduler = await make_scheduler(worker, max_batch=2)
    a = await scheduler.submit(req(), user_id=1)
    b = await scheduler.submit(req(), user_id=2)
    await scheduler.start()
    await scheduler.idle()
    for gen_id in (a.id, b.id):
        failed = await store.get(gen_id)
        assert failed.status == "failed" and "pipe broke" in failed.error
    worker.fail_with = None
    c = await scheduler.submit(req(), user_id=3)
    await scheduler.idle()
    assert (await store.get(c.id)).status == "done"


async def test_missing_result_fails_that_job_only(store, make_scheduler):
    """A result the worker forgot fails its job; the others are recorded."""
    worker = FakeWorker()
    worker.drop_last = True
    scheduler = await make_scheduler(worker, max_batch=2)
    a = await scheduler.submit(req(), user_id=1)
    b = await scheduler.submit(req(), user_id=2)
    await scheduler.start()
    await scheduler.idle()
    assert (await store.get(a.id)).status == "done"
    assert "no result" in (await store.get(b.id)).error


async def test_positions_and_eta(make_scheduler):
    """Positions follow the fair order; ETAs grow along it and follow the measured speed."""
    scheduler = await make_scheduler(initial_cost_per_second=64 * 64 * 4)  # one job per second
    heavy = [await scheduler.submit(req(), user_id=1) for _ in range(3)]
    light = await scheduler.submit(req(), user_id=2)
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


async def test_pause_holds_jobs_and_survives_a_restart(store, make_scheduler):
    """Paused: waiting jobs wait, new requests are refused; the switch is durable."""
    scheduler = await make_scheduler()
    gen = await scheduler.submit(req(), user_id=1)
    await scheduler.pause()
    await scheduler.start()
    await scheduler.idle()
    assert (await store.get(gen.id)).status == "queued"
    await scheduler.stop()
    again = await make_scheduler()
    assert await again.recover() == [gen.id]
    assert again.paused
    await again.start()
    await again.resume()
    await again.idle()
    assert (await store.get(gen.id)).status == "done"


async def test_stop_mid_batch_then_recover_runs_it_again(store, make_scheduler):
    """Stopping while a batch runs leaves it `running`; recovery runs it again, once."""
    worker = FakeWorker(manual=True)
    scheduler = await make_scheduler(worker, max_batch=1)
    jobs = [await scheduler.submit(req(prompt=f"p{i}"), user_id=i % 2) for i in range(4)]
    await scheduler.start()
    await worker.wait_pending()
    worker.release()
    running_id = int((await worker.wait_pending(not_job=str(jobs[0].id)))[0].job_id)
    await scheduler.stop()
    assert (await store.get(running_id)).status == "running"
    assert (await store.get(jobs[0].id)).status == "done"
    fresh = FakeWorker()
    again = await make_scheduler(fresh)
    recovered = await again.recover()
    assert jobs[0].id not in recovered and running_id in recovered
    assert sorted(recovered) == sorted(j.id for j in jobs[1:])
    await again.start()
    await again.idle()
    assert {(await store.get(j.id)).status for j in jobs} == {"done"}
    assert str(jobs[0].id) not in [r.job_id for call in fresh.calls for r in call]


async def test_recovery_redelivers_undelivered_results(store, make_scheduler):
    """A result recorded but never posted goes to the listeners again after a restart."""
    scheduler = await make_scheduler()
    await scheduler.start()
    posted = await scheduler.submit(req(), user_id=1)
    lost = await scheduler.submit(req(), user_id=2)
    await scheduler.idle()
    await store.mark_delivered(posted.id, channel_id=1, message_id=2)
    await scheduler.stop()
    again = await make_scheduler()
    recorder = Recorder()
    again.add_listener(recorder)
    assert await again.recover() == []
    await again.start()
    await again.idle()
    assert recorder.of("finished") == [("finished", lost.id, "done")]


async def test_a_job_that_keeps_killing_the_bot_is_failed(store, make_scheduler):
    """A job interrupted `max_runs` times is failed on recovery instead of retried forever."""
    gen = await store.create_generation(req(), user_id=1)
    for _ in range(3):
        await store.mark_running([gen.id])
        await store.requeue([gen.id])
    await store.mark_running([gen.id])
    scheduler = await make_scheduler(max_runs=3)
    assert await scheduler.recover() == []
    failed = await store.get(gen.id)
    assert failed.status == "failed" and "interrupted 4 times" in failed.error


async def test_recovered_vary_job_reads_its_source_from_disk(store, make_scheduler):
    """After a restart, a vary job gets its source image from the parent's file."""
    worker = FakeWorker()
    scheduler = await make_scheduler(worker)
    await scheduler.start()
    parent = await scheduler.submit(req(), user_id=1)
    await scheduler.idle()
    await scheduler.stop()
    source = (await store.get(parent.id)).images[0].path.read_bytes()
    await store.create_generation(
        req(mode="img2img", init_image=source, strength=0.5),
        user_id=2,
        kind="vary",
        parent_id=parent.id,
        parent_image_index=0,
    )
    again = await make_scheduler(worker)
    await again.recover()
    await again.start()
    await again.idle()
    vary_request = worker.calls[-1][0]
    assert vary_request.mode == "img2img" and vary_request.init_image == source


async def test_store_failure_mid_batch_puts_the_jobs_back(store, make_scheduler, monkeypatch):
    """If a result cannot be written, the job goes back to the queue and runs again."""
    worker = FakeWorker()
    scheduler = await make_scheduler(worker, max_batch=1)
    original = store.save_result
    failures = []

    async def flaky(gen_id, result):
        if not failures:
            failures.append(gen_id)
            raise sqlite3.OperationalError("disk I/O error")
        return await original(gen_id, result)

    monkeypatch.setattr(store, "save_result", flaky)
    monkeypatch.setattr(asyncio, "sleep", _fast_sleep(asyncio.sleep))
    gen = await scheduler.submit(req(), user_id=1)
    await scheduler.start()
    await scheduler.idle()
    assert failures == [gen.id]
    assert len(worker.calls) == 2
    assert (await store.get(gen.id)).status == "done"


def _fast_sleep(real_sleep):
    async def sleep(seconds, result=None):
        return await real_sleep(min(seconds, 0.01), result)

    return sleep


async def test_unknown_source_is_refused_and_logged(store, make_scheduler):
    """A remix of a generation that does not exist is a refusal, not a crash."""
    scheduler = await make_scheduler()
    with pytest.raises(QueueRefused) as refused:
        await scheduler.submit(req(), user_id=1, kind="remix", parent_id=4242)
    assert refused.value.reason == "bad_input" and "#4242 does not exist" in refused.value.message
    assert (await store.get(refused.value.generation.id)).status == "blocked"


async def test_a_request_without_cost_is_rejected_before_logging(store, make_scheduler):
    """A zero-sized request never reaches the log or the queue."""
    scheduler = await make_scheduler()
    with pytest.raises(ValueError):
        await scheduler.submit(req(count=0), user_id=1)
    assert await store.count_log() == 0 and scheduler.waiting_count == 0


def test_restore_puts_a_batch_back_where_it_was():
    """Jobs put back after a failed start keep their place and their users' credit."""
    for popped_first in range(6):
        queue = FairQueue()
        for i in range(24):
            queue.push(entry(i, user_id=i % 4, cost=10 + 7 * (i % 5), key=i % 2))
        for _ in range(popped_first):
            queue.pop_batch(1)
        served = dict(queue.served)
        before = [e.gen_id for e in queue.order()]
        batch = queue.pop_batch(3)
        queue.restore(batch)
        assert [e.gen_id for e in queue.order()] == before
        assert {u: c for u, c in queue.served.items() if c} == served


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
        self.store: Store | None = None

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    @initialize()
    def boot_first(self):
        self.boot()
        with sqlite3.connect(self.db) as conn:
            conn.executescript(FINALS_DDL)

    def boot(self):
        self.store = self.run(Store.open(self.db, synchronous="OFF"))
        self.worker = FakeWorker(manual=True, on_batch=self.check_batch)
        self.scheduler = Scheduler(self.store, self.worker, max_batch=3, max_waiting_per_user=4)
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
            gen = self.run(self.scheduler.submit(req(steps=steps, count=count), user_id=user))
        except QueueRefused as refused:
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
            await self.store.close()

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
            statuses = self.statuses()
            finals = self.finals()
            for gen_id in self.accepted:
                assert statuses[gen_id] in ("done", "failed", "cancelled"), (gen_id, statuses)
                assert finals[gen_id] == 1, (gen_id, finals[gen_id])
            assert not self.handed_to_worker_after_final
            self.run(self.scheduler.stop())
            self.run(self.store.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.folder, ignore_errors=True)


QueueMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCrashAndRestart = QueueMachine.TestCase
