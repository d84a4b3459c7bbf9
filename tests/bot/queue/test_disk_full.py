"""The scheduler on a full disk: results are held and saved when there is space, queued jobs
stay queued, nothing is dropped or run twice."""

from __future__ import annotations

import asyncio

import pytest

from bot.db import DiskFullError
from bot.domain import JobOrigin
from tests.bot.db.fulldisk import FullDisk
from tests.bot.queue.fakes import FakeWorker, Recorder, admission_for, req


class DiskEvents(Recorder):
    async def on_disk_full(self, held):
        self.events.append(("disk_full", tuple(held)))

    async def on_disk_ok(self):
        self.events.append(("disk_ok",))


async def wait_for(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def statuses(repos, ids):
    return [(await repos.generations.get(i)).status for i in ids]


@pytest.mark.parametrize("database_too", [False, True])
async def test_a_job_running_when_the_disk_fills_is_kept_and_delivered_once(
    repos, make_scheduler, database_too
):
    """The disk fills while a job runs: its result waits in memory, the next job stays queued,
    and both end exactly once (the first is not run again) when there is space.

    A worker is free for its next batch as soon as it has answered, while the results are
    saved; so what stays queued is a job that arrives once the disk is known to be full (with
    the database full too, a job queued before cannot even be marked running)."""
    worker = FakeWorker(manual=True)
    scheduler = await make_scheduler(worker, disk_retry=(0.02, 0.05))
    events = DiskEvents(repos)
    scheduler.add_listener(events)
    first = await scheduler.submit(req(steps=4), JobOrigin(user_id=1))
    if database_too:
        second = await scheduler.submit(req(steps=6), JobOrigin(user_id=2))  # another batch
    await scheduler.start()
    await worker.wait_pending()
    disk = FullDisk(repos)
    disk.fill(database=database_too)
    worker.release()
    await wait_for(lambda: scheduler.disk_full and scheduler.held_ids == [first.id])
    if not database_too:
        second = await scheduler.submit(req(steps=6), JobOrigin(user_id=2))
    await asyncio.sleep(0.2)  # several tries to save, all failing
    assert await statuses(repos, [first.id, second.id]) == ["running", "queued"]
    assert [len(call) for call in worker.calls] == [1]  # nothing new started meanwhile
    assert ("disk_full", (first.id,)) in events.events
    assert not events.of("finished")
    admission = admission_for(repos, scheduler)
    with pytest.raises(DiskFullError):
        await admission.admit(req("while full"), JobOrigin(user_id=3))

    disk.free()
    await wait_for(lambda: worker.pending is not None)
    worker.release()
    await asyncio.wait_for(scheduler.idle(), 5)
    assert await statuses(repos, [first.id, second.id]) == ["done", "done"]
    finished = [e[1] for e in events.of("finished")]
    assert finished == [first.id, second.id]
    assert [[r.job_id for r in call] for call in worker.calls] == [
        [str(first.id)],
        [str(second.id)],
    ]
    assert events.of("disk_ok") == [("disk_ok",)]
    assert not scheduler.disk_full
    done = await repos.generations.get(first.id)
    assert done.images and all(image.path.is_file() for image in done.images)


async def test_a_full_database_when_a_batch_starts_keeps_the_jobs_queued(repos, make_scheduler):
    """mark_running fails for lack of space: the jobs stay queued and run once it is back."""
    worker = FakeWorker()
    scheduler = await make_scheduler(worker, disk_retry=(0.02, 0.05))
    events = DiskEvents(repos)
    scheduler.add_listener(events)
    gens = [await scheduler.submit(req(), JobOrigin(user_id=u)) for u in (1, 2)]
    disk = FullDisk(repos)
    disk.fill()
    await scheduler.start()
    await wait_for(lambda: scheduler.disk_full)
    await asyncio.sleep(0.1)
    assert not worker.calls
    assert await statuses(repos, [g.id for g in gens]) == ["queued", "queued"]
    assert scheduler.waiting_count == 2
    disk.free()
    await asyncio.wait_for(scheduler.idle(), 5)
    assert await statuses(repos, [g.id for g in gens]) == ["done", "done"]
    assert sorted(e[1] for e in events.of("finished")) == sorted(g.id for g in gens)


async def test_a_job_that_could_not_be_set_back_to_queued_still_runs(repos, make_scheduler):
    """A batch fails after `running` was recorded and, the disk being full, its row cannot be
    set back to `queued`: the next try must not skip it as "not queued any more"."""
    worker = FakeWorker()
    scheduler = await make_scheduler(worker, disk_retry=(0.02, 0.05))
    events = DiskEvents(repos)
    scheduler.add_listener(events)
    gen = await scheduler.submit(req(), JobOrigin(user_id=1))
    disk = FullDisk(repos)
    real_finish = scheduler._finish

    async def fail_with_a_full_disk(*args):
        scheduler._finish = real_finish
        disk.fill()
        raise DiskFullError("The disk is full (No space left on device).")

    scheduler._finish = fail_with_a_full_disk
    await scheduler.start()
    await wait_for(lambda: scheduler.disk_full)
    await asyncio.sleep(0.1)
    assert await statuses(repos, [gen.id]) == ["running"]  # could not be set back
    disk.free()
    await asyncio.wait_for(scheduler.idle(), 5)
    assert await statuses(repos, [gen.id]) == ["done"]
    assert [e[1] for e in events.of("finished")] == [gen.id]
