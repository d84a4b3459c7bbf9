"""The dispatcher's timing rules: the batching window, waiting for the model, and recording a
batch while the next one runs."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bot.domain import JobOrigin
from tests.bot.queue.fakes import FakeWorker, admission_for, req


async def simultaneous(admission, n: int) -> list:
    """`n` members press /imagine at the same moment."""
    return await asyncio.gather(
        *(admission.admit(req(prompt=f"fox {i}"), JobOrigin(user_id=i)) for i in range(n))
    )


async def test_eight_simultaneous_requests_run_as_four_and_four(repos, make_scheduler):
    """With a batching window, eight compatible requests arriving together with batch size 4
    run as 4 + 4, not as 1 + 4 + 3."""
    worker = FakeWorker()
    scheduler = await make_scheduler(worker, max_batch=4, batch_window=2.0)
    await scheduler.start()
    await simultaneous(admission_for(repos, scheduler), 8)
    await scheduler.idle()
    assert [len(call) for call in worker.calls] == [4, 4]


async def test_without_a_window_the_first_arrival_runs_alone(repos, make_scheduler):
    """The contrast: no window, and the first of eight is dispatched by itself."""
    worker = FakeWorker()
    scheduler = await make_scheduler(worker, max_batch=4, batch_window=0.0)
    await scheduler.start()
    await simultaneous(admission_for(repos, scheduler), 8)
    await scheduler.idle()
    assert len(worker.calls[0]) == 1 and sum(map(len, worker.calls)) == 8


async def test_a_lone_request_does_not_wait_for_the_window(repos, make_scheduler):
    """Nothing compatible on its way: the job starts at once, window or not."""
    worker = FakeWorker(manual=True)
    scheduler = await make_scheduler(worker, max_batch=4, batch_window=60.0)
    await scheduler.start()
    await admission_for(repos, scheduler).admit(req(), JobOrigin(user_id=1))
    await asyncio.wait_for(worker.wait_pending(), 5)
    with scheduler.arriving(req(steps=8)):  # an incompatible request does not hold it either
        worker.release()
        await admission_for(repos, scheduler).admit(req(), JobOrigin(user_id=2))
        await asyncio.wait_for(worker.wait_pending(), 5)
        worker.release()
    await scheduler.idle()
    assert [len(call) for call in worker.calls] == [1, 1]


async def test_a_full_batch_does_not_wait(repos, make_scheduler):
    """Four compatible jobs queued fill the batch: it starts though a fifth is on its way."""
    worker = FakeWorker(manual=True)
    scheduler = await make_scheduler(worker, max_batch=4, batch_window=60.0)
    for user in range(4):
        await scheduler.submit(req(), JobOrigin(user_id=user))
    with scheduler.arriving(req()):
        await scheduler.start()
        batch = await asyncio.wait_for(worker.wait_pending(), 5)
        assert len(batch) == 4
        worker.release()
    await scheduler.idle()


async def test_the_window_ends_when_the_arrival_is_refused_or_times_out(repos, make_scheduler):
    """A compatible request being admitted holds a half-full batch until it is queued or
    refused, or until the window ends."""
    worker = FakeWorker(manual=True)
    scheduler = await make_scheduler(worker, max_batch=4, batch_window=60.0)
    await scheduler.submit(req(), JobOrigin(user_id=1))
    with scheduler.arriving(req()):
        await scheduler.start()
        await asyncio.sleep(0.2)
        assert worker.pending is None  # held open for the request being admitted
    batch = await asyncio.wait_for(worker.wait_pending(), 5)  # refused: it goes alone
    assert len(batch) == 1
    worker.release()
    await scheduler.idle()
    short = await make_scheduler(worker, max_batch=4, batch_window=0.3)
    await short.submit(req(), JobOrigin(user_id=1))
    with short.arriving(req()):
        await short.start()
        batch = await asyncio.wait_for(worker.wait_pending(), 5)  # the window ran out
        assert len(batch) == 1
        worker.release()
    await short.idle()


async def test_jobs_queue_while_the_model_loads_and_start_when_it_is_ready(repos, make_scheduler):
    """While the worker loads, jobs are accepted and wait (their ETA includes the load);
    once it is ready they run, batched together."""
    worker = FakeWorker()
    worker.loaded.clear()
    scheduler = await make_scheduler(worker, max_batch=4, initial_cost_per_second=64 * 64 * 4)
    await scheduler.start()
    gens = [await scheduler.submit(req(), JobOrigin(user_id=u)) for u in range(3)]
    await asyncio.sleep(0.1)
    assert worker.calls == [] and not scheduler.readiness().ready
    assert scheduler.position(gens[0].id) == 1
    assert scheduler.eta_seconds(gens[0].id) == pytest.approx(20.0 + 1.0)
    assert [j.eta_seconds for j in scheduler.user_jobs(2)] == [pytest.approx(20.0 + 3.0)]
    worker.loaded.set()
    await scheduler.idle()
    assert [len(call) for call in worker.calls] == [3]
    assert {(await repos.generations.get(g.id)).status for g in gens} == {"done"}


async def test_next_batch_runs_while_the_last_one_is_recorded(repos, make_scheduler, monkeypatch):
    """The worker gets the next batch while the previous batch's PNGs are still being encoded
    (in a thread); a job cancelled before its result is written ends cancelled."""
    import bot.queue.scheduler as scheduler_module

    worker = FakeWorker(manual=True, raw=True)
    scheduler = await make_scheduler(worker, max_batch=1)
    encoding = threading.Event()
    may_encode = threading.Event()
    real_encode = scheduler_module.encode_pngs

    def slow_encode(result):
        encoding.set()
        may_encode.wait(10)
        return real_encode(result)

    monkeypatch.setattr(scheduler_module, "encode_pngs", slow_encode)
    first = await scheduler.submit(req(), JobOrigin(user_id=1))
    second = await scheduler.submit(req(), JobOrigin(user_id=2))
    await scheduler.start()
    await worker.wait_pending()
    worker.release()
    running = await asyncio.wait_for(worker.wait_pending(not_job=str(first.id)), 5)
    assert running[0].job_id == str(second.id)  # the worker did not wait for the first's PNGs
    assert encoding.is_set()
    assert scheduler.position(first.id) == 0
    assert [j.status for j in scheduler.user_jobs(1)] == ["running"]
    assert await scheduler.cancel(first.id, user_id=1)
    may_encode.set()
    worker.release()
    await scheduler.idle()
    assert (await repos.generations.get(first.id)).status == "cancelled"
    done = await repos.generations.get(second.id)
    assert done.status == "done"
    assert done.images[0].path.read_bytes().startswith(b"\x89PNG")  # encoded by the scheduler


async def test_a_cancel_while_the_result_is_written_is_too_late(repos, make_scheduler, monkeypatch):
    """Once the result is being written, cancel says there is nothing to cancel."""
    worker = FakeWorker()
    scheduler = await make_scheduler(worker)
    original = repos.generations.save_result
    writing, may_write = asyncio.Event(), asyncio.Event()

    async def slow_save(gen_id, result):
        writing.set()
        await may_write.wait()
        return await original(gen_id, result)

    monkeypatch.setattr(repos.generations, "save_result", slow_save)
    gen = await scheduler.submit(req(), JobOrigin(user_id=1))
    await scheduler.start()
    await writing.wait()
    assert not await scheduler.cancel(gen.id)
    may_write.set()
    await scheduler.idle()
    assert (await repos.generations.get(gen.id)).status == "done"


async def test_a_result_that_cannot_be_encoded_fails_alone(repos, make_scheduler, monkeypatch):
    """An encoding error fails that job only; its batch mates are saved and nothing runs
    again."""
    import bot.queue.scheduler as scheduler_module

    worker = FakeWorker(raw=True)
    scheduler = await make_scheduler(worker, max_batch=2)
    real_encode = scheduler_module.encode_pngs
    gens = [await scheduler.submit(req(), JobOrigin(user_id=u)) for u in (1, 2)]

    def encode(result):
        if result.job_id == str(gens[0].id):
            raise MemoryError("no room for the PNG")
        return real_encode(result)

    monkeypatch.setattr(scheduler_module, "encode_pngs", encode)
    await scheduler.start()
    await scheduler.idle()
    bad, good = [await repos.generations.get(g.id) for g in gens]
    assert bad.status == "failed" and "could not be saved as PNG" in bad.error
    assert good.status == "done" and good.images
    assert len(worker.calls) == 1


async def test_stop_with_grace_starts_no_new_batch(repos, make_scheduler):
    """During stop's grace the running batch may finish, but nothing new is started (it would
    only be cut short and counted as interrupted)."""
    worker = FakeWorker(manual=True)
    scheduler = await make_scheduler(worker, max_batch=1)
    first = await scheduler.submit(req(), JobOrigin(user_id=1))
    second = await scheduler.submit(req(), JobOrigin(user_id=2))
    await scheduler.start()
    await worker.wait_pending()
    stopping = asyncio.create_task(scheduler.stop(grace=2.0))
    await asyncio.sleep(0.05)
    worker.release()
    await asyncio.wait_for(stopping, 5)
    assert len(worker.calls) == 1
    assert (await repos.generations.get(first.id)).status == "done"
    assert (await repos.generations.get(second.id)).status == "queued"
