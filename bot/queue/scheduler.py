"""The durable fair queue and the dispatcher that feeds the inference workers.

`Scheduler` wraps `FairQueue` with the database (every state change is written before it is
acted on) and the workers. It does not decide who may queue: `bot/services/admission.py` does,
then calls `submit`. Nothing here imports discord or torch. The workers are a
`inference.backend.WorkerBackend` (a pool of processes, or Ray actors): each free worker gets
the next fair batch, so several batches run at once; a lone worker with `run()` and `cancel()`
is a pool of one.

    scheduler = Scheduler(repos, worker, max_batch=4, batch_window=0.04)
    scheduler.add_listener(listener)   # a SchedulerListener
    await scheduler.recover()          # queued/running jobs from the last run, in order
    await scheduler.start()            # jobs wait (with an ETA) while the model still loads
    with scheduler.arriving(request):  # admission deciding: a batch may wait for it
        gen = await scheduler.submit(request, origin)
    …
    await scheduler.stop()

A worker is given back as soon as it has answered: the PNGs are encoded (in threads) and the
results recorded while it already runs its next batch, so the GPU does not wait for the bot's
bookkeeping.

A full disk stops nothing for good: a result that cannot be saved is held in memory and saved
again (with backoff) before any new batch starts, queued jobs stay queued, and the listeners
hear `on_disk_full` and `on_disk_ok`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from bot.db import DiskFullError, Repositories, StoreError
from bot.domain import Generation, JobOrigin, Status
from inference.backend import UP, Slot, WorkerBackend, WorkerStatus
from inference.engine import encode_pngs
from inference.request import GenerationRequest, GenerationResult
from inference.worker import CRASHED_TWICE, Readiness, WorkerCrashed

from .fair import FairQueue, QueueEntry
from .workers import OneWorker, WorkerInfo, WorkerLike

log = logging.getLogger(__name__)

# A job interrupted this many times (the bot died while it ran) is failed instead of retried.
MAX_RUNS = 3
# Seconds `stop()` gives batches the workers have finished to be recorded (not run again).
RECORD_GRACE = 10.0


class SchedulerListener(Protocol):
    """What the bot hears from the queue.

    Events are delivered in order by one task, after the database has recorded the change, and
    never block the dispatcher; an exception in a hook is logged and ignored.
    """

    async def on_queued(self, gen: Generation) -> None:
        """A job was accepted (its position and ETA: `scheduler.position/eta_seconds`)."""

    async def on_started(self, gen: Generation) -> None:
        """A job was handed to the worker (status `running`)."""

    async def on_progress(self, gen_id: int, step: int, total: int) -> None:
        """Denoising progress of a running job (coalesced: only the latest step is sent)."""

    async def on_preview(self, gen_id: int, png: bytes) -> None:
        """A rough preview of a running job's first image (comes just before an on_progress)."""

    async def on_finished(self, gen: Generation, result: GenerationResult) -> None:
        """A job ended: `gen.status` is done, failed or cancelled; images are on disk and in
        `result`. Post the result (or the failure notice), then call
        `generations.mark_delivered(gen.id, channel_id=…, message_id=…)`: a done or failed job
        left undelivered is sent to `on_finished` again by the next `recover()`. Cancelled jobs
        need no delivery."""

    async def on_disk_full(self, held: list[int]) -> None:
        """The disk is full: these finished jobs wait (in memory) to be saved, new batches wait.
        Heard when the disk fills and again whenever another result has to wait."""

    async def on_disk_ok(self) -> None:
        """There is space again: held results are saved (their `on_finished` follows)."""

    async def on_worker(self, worker: WorkerInfo, workers: list[WorkerInfo]) -> None:
        """A worker changed state (loading, idle, running, down); `workers` is every one."""


class QuietListener:
    """A listener that ignores every event; subclass it and override what you need."""

    async def on_queued(self, gen: Generation) -> None:
        return None

    async def on_started(self, gen: Generation) -> None:
        return None

    async def on_progress(self, gen_id: int, step: int, total: int) -> None:
        return None

    async def on_preview(self, gen_id: int, png: bytes) -> None:
        return None

    async def on_finished(self, gen: Generation, result: GenerationResult) -> None:
        return None

    async def on_disk_full(self, held: list[int]) -> None:
        return None

    async def on_disk_ok(self) -> None:
        return None

    async def on_worker(self, worker: WorkerInfo, workers: list[WorkerInfo]) -> None:
        return None


# The events, in the order the notifier delivers them.
@dataclass(frozen=True)
class _Queued:
    gen: Generation


@dataclass(frozen=True)
class _Started:
    gen: Generation


@dataclass(frozen=True)
class _Progressed:
    gen_id: int  # the latest step and preview are read when the event is delivered


@dataclass(frozen=True)
class _Finished:
    gen: Generation
    result: GenerationResult


@dataclass(frozen=True)
class _WorkerChanged:
    status: WorkerStatus


@dataclass(frozen=True)
class _DiskFull:
    held: tuple[int, ...]


@dataclass(frozen=True)
class _DiskOk:
    pass


_Event = _Queued | _Started | _Progressed | _Finished | _WorkerChanged | _DiskFull | _DiskOk


@dataclass(frozen=True)
class JobInfo:
    """A waiting or running job as `/queue` shows it."""

    gen_id: int
    user_id: int
    status: Status  # running or queued
    position: int  # 0 = running, 1 = starts next, …
    eta_seconds: float  # until it is expected to be finished
    request: GenerationRequest


@dataclass
class _Running:
    """One batch from the moment it leaves the queue until its results are recorded."""

    entries: list[QueueEntry]  # the jobs still to run (cancelled or skipped ones leave)
    started: float
    cost: int
    worker: str  # the worker that runs it (or ran it, before a retry)
    slot: Slot | None  # held while the worker works on it; None between attempts
    taken: list[QueueEntry] = field(default_factory=list)  # everything popped for it
    progress: float = 0.0  # fraction of the batch's steps done
    cancelled: set[int] = field(default_factory=set)
    recorded: set[int] = field(default_factory=set)  # results written to the database
    saving: set[int] = field(default_factory=set)  # being written: too late to cancel
    recording: bool = False  # the worker has answered; the results are being recorded
    task: asyncio.Task[None] | None = None
    cancel_arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def ids(self) -> list[int]:
        return [entry.gen_id for entry in self.entries]


def _encode(result: GenerationResult) -> None:
    """Encode a result's PNGs in place; one that cannot be encoded fails that job alone (the
    batch is not run again)."""
    try:
        encode_pngs(result)
    except Exception as error:
        log.exception("Could not encode the images of job %s", result.job_id)
        result.images = []
        result.error = f"The images could not be saved as PNG ({type(error).__name__})."


class Scheduler:
    """The durable fair queue: submit, cancel, pause, positions/ETA, recovery, dispatch."""

    def __init__(
        self,
        repos: Repositories,
        worker: WorkerBackend | WorkerLike,
        *,
        max_batch: int = 4,
        quantum: int = 1,
        initial_cost_per_second: float = 10e6,
        eta_smoothing: float = 0.3,
        lookahead: int | None = None,
        max_runs: int = MAX_RUNS,
        disk_retry: tuple[float, float] = (1.0, 30.0),
        batch_window: float = 0.0,
    ):
        """Cost is pixels × steps × images, so `initial_cost_per_second` =
        settings.queue.initial_mpix_steps_per_second × 1e6 (the ETA's first guess until a batch
        has been measured). While the disk is full, saving is tried again after
        `disk_retry[0]` seconds, doubling up to `disk_retry[1]`. `batch_window`: seconds a
        free worker may wait for compatible requests that admission is still deciding on, to
        fill its batch."""
        self.repos = repos
        self.generations = repos.generations
        self.workers: WorkerBackend = (
            worker if isinstance(worker, WorkerBackend) else OneWorker(worker)
        )
        self.workers.subscribe(lambda status: self._emit(_WorkerChanged(status)))
        self.max_batch = max(1, int(max_batch))
        self.lookahead = lookahead
        self.max_runs = max(1, int(max_runs))
        self.batch_window = max(0.0, float(batch_window))
        self._arriving: Counter[tuple[Any, ...]] = Counter()  # batch keys being admitted
        self.queue = FairQueue(quantum)
        # One worker's speed (the moving average of every batch), and each worker's own.
        self.cost_per_second = float(initial_cost_per_second)
        self._rates: dict[str, float] = {}
        self.eta_smoothing = float(eta_smoothing)
        self._paused = False
        self._listeners: list[SchedulerListener] = []
        self._running: dict[int, _Running] = {}  # by batch number
        self._batch_numbers = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._events: asyncio.Queue[_Event] = asyncio.Queue()
        self._progress: dict[int, tuple[int, int]] = {}
        self._previews: dict[int, bytes] = {}  # the latest preview image of a running job
        self._dispatcher: asyncio.Task[None] | None = None
        self._notifier: asyncio.Task[None] | None = None
        self._not_busy = asyncio.Event()
        self._not_busy.set()
        self.batches_run = 0
        self.disk_retry = disk_retry
        self._disk_full = False
        # Finished jobs whose result could not be saved yet (no space), in finishing order.
        self._held: list[tuple[QueueEntry, GenerationResult]] = []
        # Jobs back in the queue whose row could not be set back to `queued` yet.
        self._unrequeued: set[int] = set()
        self._announced: set[int] = set()  # held jobs the listeners have heard of

    # -- listeners -----------------------------------------------------------------------------

    def add_listener(self, listener: SchedulerListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: SchedulerListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _emit(self, event: _Event) -> None:
        self._events.put_nowait(event)

    async def _notify_loop(self) -> None:
        while True:
            event = await self._events.get()
            try:
                progress = None
                if isinstance(event, _Progressed):
                    # Coalesced: the newest step (and preview) when the event comes up.
                    step_total = self._progress.pop(event.gen_id, None)
                    if step_total is None:
                        continue
                    progress = (*step_total, self._previews.pop(event.gen_id, None))
                for listener in list(self._listeners):
                    try:
                        await self._deliver(listener, event, progress)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("Listener %r failed on %s", listener, type(event).__name__)
            finally:
                self._events.task_done()

    async def _deliver(
        self,
        listener: SchedulerListener,
        event: _Event,
        progress: tuple[int, int, bytes | None] | None,
    ) -> None:
        match event:
            case _Queued(gen):
                await listener.on_queued(gen)
            case _Started(gen):
                await listener.on_started(gen)
            case _Progressed(gen_id) if progress is not None:
                step, total, preview = progress
                if preview is not None:
                    await listener.on_preview(gen_id, preview)
                await listener.on_progress(gen_id, step, total)
            case _Finished(gen, result):
                await listener.on_finished(gen, result)
            case _WorkerChanged(status):
                await listener.on_worker(WorkerInfo(status, ()), self.workers_info())
            case _DiskFull(held):
                await listener.on_disk_full(list(held))
            case _DiskOk():
                await listener.on_disk_ok()

    # -- state ---------------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def waiting_count(self) -> int:
        """Jobs waiting (not counting the running batch)."""
        return len(self.queue)

    def waiting_for(self, user_id: int) -> int:
        """How many jobs a member has waiting."""
        return self.queue.waiting_for(user_id)

    @property
    def running_ids(self) -> set[int]:
        return {e.gen_id for running in self._running.values() for e in running.entries}

    @property
    def disk_full(self) -> bool:
        """The last write failed for lack of space and no write has worked since."""
        return self._disk_full

    @property
    def held_ids(self) -> list[int]:
        """Finished jobs whose results wait in memory for space on the disk."""
        return [entry.gen_id for entry, _ in self._held]

    def report_disk_full(self, error: DiskFullError) -> None:
        """A write outside the queue (a new request) failed for lack of space: say so once,
        and let the dispatcher find out when there is space again."""
        self._note_disk_full(error)

    @property
    def busy(self) -> bool:
        """A batch is being taken, run or recorded."""
        return bool(self._tasks)

    def _batch_of(self, gen_id: int) -> _Running | None:
        for running in self._running.values():
            if any(entry.gen_id == gen_id for entry in running.entries):
                return running
        return None

    def worker_of(self, gen_id: int) -> WorkerStatus | None:
        """The worker that runs a job now (None while it waits for one)."""
        running = self._batch_of(gen_id)
        if running is None or running.slot is None:
            return None
        return next((s for s in self.workers.statuses() if s.name == running.worker), None)

    def workers_info(self) -> list[WorkerInfo]:
        """Every worker, its state and the jobs it runs now."""
        jobs: dict[str, list[int]] = {}
        for running in self._running.values():
            if running.slot is not None:
                jobs.setdefault(running.worker, []).extend(running.ids())
        return [WorkerInfo(s, tuple(sorted(jobs.get(s.name, ())))) for s in self.workers.statuses()]

    def readiness(self) -> Readiness:
        """Whether a worker is up, or how far loading the model has got (members are told)."""
        return self.workers.readiness()

    def _load_seconds_left(self) -> float:
        readiness = self.workers.readiness()
        return 0.0 if readiness.ready else readiness.seconds_left or 0.0

    @property
    def pool_cost_per_second(self) -> float:
        """The pool's combined measured speed: the sum over the workers that are up."""
        up = [s.name for s in self.workers.statuses() if s.state in UP]
        return sum(self._rate_of(name) for name in up) if up else self.cost_per_second

    def _rate_of(self, worker: str) -> float:
        return self._rates.get(worker, self.cost_per_second)

    @property
    def started(self) -> bool:
        return self._dispatcher is not None and not self._dispatcher.done()

    def position(self, gen_id: int) -> int | None:
        """0 = running now, 1 = starts next, …; None if neither waiting nor running."""
        if gen_id in self.running_ids:
            return 0
        position = self.queue.position(gen_id)
        return None if position is None else position + 1

    def _remaining_cost(self, running: _Running) -> float:
        by_progress = running.cost * (1.0 - running.progress)
        elapsed = time.monotonic() - running.started
        by_clock = max(0.0, running.cost - elapsed * self._rate_of(running.worker))
        return min(by_progress, by_clock) if running.progress > 0 else by_clock

    def _running_remaining_cost(self) -> float:
        return sum(self._remaining_cost(running) for running in self._running.values())

    def _queued_eta(
        self, cost_until_done: float, own_cost: float, load_left: float | None = None
    ) -> float:
        """The pool works through the cost ahead at its combined speed; a job never takes
        less than it would alone on the fastest worker that is up. While the model loads,
        what is left of loading comes first."""
        up = [self._rate_of(s.name) for s in self.workers.statuses() if s.state in UP]
        fastest = max(up, default=self.cost_per_second)
        wait = self._load_seconds_left() if load_left is None else load_left
        return wait + max(cost_until_done / self.pool_cost_per_second, own_cost / fastest)

    def eta_seconds(self, gen_id: int) -> float | None:
        """Seconds until the job is expected to be finished (from the measured cost per
        second, plus what is left of loading the model); None if it is neither waiting nor
        running. Costs no more than a position: the queue keeps its order."""
        running = self._batch_of(gen_id)
        if running is not None:
            return self._remaining_cost(running) / self._rate_of(running.worker)
        ahead = self.queue.cost_ahead(gen_id)
        entry = self.queue.get(gen_id)
        if ahead is None or entry is None:
            return None
        remaining = self._running_remaining_cost()
        return self._queued_eta(remaining + ahead + entry.cost, entry.cost)

    def _running_infos(self) -> list[JobInfo]:
        infos: list[JobInfo] = []
        for running in self._running.values():
            eta = self._remaining_cost(running) / self._rate_of(running.worker)
            for entry in running.entries:
                infos.append(
                    JobInfo(entry.gen_id, entry.user_id, Status.RUNNING, 0, eta, entry.request)
                )
        infos.sort(key=lambda info: info.eta_seconds)
        return infos

    def jobs(self) -> list[JobInfo]:
        """Every running and waiting job, in the order they will finish (O(n): for
        listings; a member's own jobs are `user_jobs`)."""
        infos = self._running_infos()
        done_cost = self._running_remaining_cost()
        load_left = self._load_seconds_left()
        for i, entry in enumerate(self.queue.order(), start=1):
            done_cost += entry.cost
            eta = self._queued_eta(done_cost, entry.cost, load_left)
            infos.append(JobInfo(entry.gen_id, entry.user_id, Status.QUEUED, i, eta, entry.request))
        return infos

    def user_jobs(self, user_id: int) -> list[JobInfo]:
        """A member's running and waiting jobs with positions and ETAs (O(own jobs): the
        queue keeps its fair order)."""
        infos = [info for info in self._running_infos() if info.user_id == user_id]
        for entry in self.queue.entries_of(user_id):
            position, eta = self.position(entry.gen_id), self.eta_seconds(entry.gen_id)
            if position is None or eta is None:
                continue
            infos.append(
                JobInfo(entry.gen_id, user_id, Status.QUEUED, position, eta, entry.request)
            )
        infos.sort(key=lambda info: (info.position, info.eta_seconds))
        return infos

    # -- submitting ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def arriving(self, request: GenerationRequest) -> Iterator[None]:
        """Held by admission while it decides on a request: a free worker whose batch has
        room may wait up to `batch_window` for it (and only for such a request)."""
        key = request.batch_key()
        self._arriving[key] += 1
        try:
            yield
        finally:
            self._arriving[key] -= 1
            if not self._arriving[key]:
                del self._arriving[key]
            self._wake.set()

    async def submit(self, request: GenerationRequest, origin: JobOrigin) -> Generation:
        """Queue an admitted request: log it `queued`, queue it, tell the listeners.

        Raises StoreError if `origin.parent_id` does not exist. Who may queue what is decided
        before this, by `bot.services.admission.Admission`.
        """
        if request.cost < 1:
            raise ValueError("A request must have a positive size, step count and image count.")
        gen = await self.generations.create(request, origin)
        seeded = dataclasses.replace(request, seed=gen.recipe["seed"])
        self.queue.push(QueueEntry.of(gen.id, origin.user_id, seeded))
        self._emit(_Queued(gen))
        self._wake.set()
        return gen

    # -- cancel, pause -------------------------------------------------------------------------

    async def cancel(self, gen_id: int, *, user_id: int | None = None) -> bool:
        """Cancel a waiting job (removed at once) or a running one (stopped between steps).

        With `user_id`, only that member's job is cancelled. False if there was nothing to
        cancel.
        """
        entry = self.queue.get(gen_id)
        if entry is not None:
            if user_id is not None and entry.user_id != user_id:
                return False
            self.queue.remove(gen_id)
            gen = await self.generations.mark_cancelled(gen_id)
            if gen is not None:
                self._emit(_Finished(gen, GenerationResult(job_id=str(gen_id), cancelled=True)))
            return True
        running = self._batch_of(gen_id)
        if running is not None:
            for entry in running.entries:
                if entry.gen_id == gen_id:
                    if user_id is not None and entry.user_id != user_id:
                        return False
                    if gen_id in running.saving:
                        return False  # its result is being written: too late
                    running.cancelled.add(gen_id)
                    running.cancel_arrived.set()
                    if running.slot is not None:  # the worker that runs it, wherever it is
                        running.slot.cancel(str(gen_id))
                    return True
        return False

    async def cancel_user(
        self, user_id: int, *, guild_id: int | None = None, include_running: bool = True
    ) -> list[int]:
        """Cancel a member's jobs (e.g. `/cancel` with no id, or after a ban); returns the ids.

        With `guild_id`, only jobs made in that server.
        """
        targets = [e.gen_id for e in self.queue.entries_of(user_id)]
        if include_running:
            running = [e for r in self._running.values() for e in r.entries]
            targets += [e.gen_id for e in running if e.user_id == user_id]
        if guild_id is not None:
            gens = {g.id: g for g in await self.generations.get_many(targets)}
            targets = [t for t in targets if t in gens and gens[t].guild_id == guild_id]
        return [gen_id for gen_id in targets if await self.cancel(gen_id, user_id=user_id)]

    async def pause(self) -> None:
        """Stop starting new jobs (waiting ones wait; new requests are refused). Survives a
        restart."""
        self._paused = True
        await self.repos.state.set_paused(True)

    async def resume(self) -> None:
        self._paused = False
        await self.repos.state.set_paused(False)
        self._wake.set()

    # -- recovery ------------------------------------------------------------------------------

    async def recover(self, *, redeliver: bool = True) -> list[int]:
        """Queue again the jobs left `queued` or `running` by the last run, in their original
        order (a `running` job was never delivered); a `done` job is never run again.

        A job interrupted `max_runs` times is failed instead. With `redeliver`, finished jobs
        whose result was never posted are sent to the listeners' `on_finished` again. Call it
        before `start()`, after adding the listeners. Returns the ids queued again.
        """
        self._paused = await self.repos.state.paused()
        recovered: list[int] = []
        busy = self.running_ids
        jobs = [g for g in await self.generations.jobs_to_recover() if g.id not in busy]
        await self.generations.requeue([g.id for g in jobs if g.status == Status.RUNNING])
        for gen in jobs:
            if gen.id in self.queue:
                continue
            if gen.runs >= self.max_runs:
                failed = await self.generations.mark_failed(
                    gen.id,
                    f"This job was interrupted {gen.runs} times while it ran, so it was not "
                    "tried again.",
                )
                if failed is not None and not redeliver:
                    self._emit(_Finished(failed, GenerationResult(str(gen.id), error=failed.error)))
                continue
            # The source image of vary/upscale is read from disk when its batch starts.
            try:
                self.queue.push(QueueEntry.of(gen.id, gen.user_id, gen.request))
            except (TypeError, ValueError) as error:
                log.error("Cannot queue #%d again: %s", gen.id, error)
                await self.generations.mark_failed(
                    gen.id, "This job's recipe could not be read back."
                )
                continue
            recovered.append(gen.id)
        if redeliver:
            for gen in await self.generations.undelivered(limit=1000):
                self._emit(_Finished(gen, await self.repos.images.load_result(gen)))
        if recovered:
            log.info("Recovered %d queued job(s): %s", len(recovered), recovered)
        self._wake.set()
        return recovered

    # -- the dispatcher ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the dispatcher and the listener task (idempotent)."""
        if self._notifier is None or self._notifier.done():
            self._notifier = asyncio.create_task(self._notify_loop(), name="easel-notifier")
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="easel-dispatcher")
        self._wake.set()

    async def stop(self, *, grace: float = 0.0) -> None:
        """Stop the dispatcher, waiting up to `grace` seconds for running batches to finish.

        Whatever is still running stays `running` in the database and is queued again by the
        next `recover()`; nothing is lost. Pending listener events are delivered within `grace`.
        """
        dispatcher, notifier = self._dispatcher, self._notifier
        self._dispatcher = self._notifier = None
        if self._held:
            log.warning(
                "%d finished job(s) could not be saved (disk full): %s; they run again at the "
                "next start",
                len(self._held),
                self.held_ids,
            )
        if dispatcher is not None:
            # No new batch first: one started during the grace would only be cut short.
            dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatcher
            if grace > 0 and self.busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._not_busy.wait()), grace)
        # Batches the workers have finished are recorded (milliseconds), not run again.
        recording = [
            r.task for r in self._running.values() if r.recording and r.task and not r.task.done()
        ]
        if recording:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(asyncio.gather(*recording, return_exceptions=True)),
                    RECORD_GRACE,
                )
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if notifier is not None:
            if grace > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._events.join(), grace)
            notifier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await notifier
        self._running.clear()
        self._tasks.clear()
        self._not_busy.set()

    async def idle(self) -> None:
        """Wait until nothing runs, nothing can start (queue empty or paused) and every event
        has reached the listeners. Needs `start()`."""
        while True:
            await self._events.join()
            settled = not self._held and not self._disk_full
            if not self.busy and settled and (self.waiting_count == 0 or self._paused):
                await asyncio.sleep(0)
                if not self.busy and self._events.empty():
                    return
            await asyncio.sleep(0.005)

    async def _dispatch_loop(self) -> None:
        """Each free worker gets the next fair batch; the batches run side by side. While the
        disk is full no batch starts: the held results are saved first, with backoff."""
        wait = self.disk_retry[0]
        while True:
            while not self._disk_full and (self._paused or not self.queue):
                self._wake.clear()
                await self._wake.wait()
            try:
                if self._disk_full:
                    await self._recover_from_full_disk()
                    wait = self.disk_retry[0]
                    continue
                await self._requeue_leftovers()
            except asyncio.CancelledError:
                raise
            except DiskFullError as error:
                self._note_disk_full(error)
                await asyncio.sleep(wait)
                wait = min(wait * 2, self.disk_retry[1])
                continue
            except Exception:
                log.exception("Dispatcher error; retrying in 1 s")
                await asyncio.sleep(1.0)
                continue
            slot = await self.workers.acquire()
            try:
                await self._batching_window()
            except BaseException:
                self.workers.release(slot)
                raise
            # Changed while we waited for a worker (or for the window)?
            if self._disk_full or self._paused or not self.queue:
                self.workers.release(slot)
                continue
            try:
                self._start_batch(slot)
            except Exception:  # a bug must not stop the dispatcher for good
                log.exception("Dispatcher error; retrying in 1 s")
                self.workers.release(slot)
                await asyncio.sleep(1.0)

    async def _batching_window(self) -> None:
        """With a worker in hand: wait up to `batch_window` while the head's batch has room
        and a compatible request is still being admitted; never when the batch is full or
        nothing compatible is on its way."""
        if self.batch_window <= 0:
            return
        deadline = time.monotonic() + self.batch_window
        while True:
            head = self.queue.peek()
            if head is None or self._paused or self._disk_full:
                return
            if self.queue.compatible(head.batch_key) >= self.max_batch:
                return
            if not self._arriving.get(head.batch_key):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)

    def _note_disk_full(self, error: DiskFullError) -> None:
        """Tell the listeners when the disk fills, and when another result has to wait."""
        held = self.held_ids
        if self._disk_full and set(held) <= self._announced:
            return
        if not self._disk_full:
            log.warning(
                "%s Queued jobs wait and finished images are kept in memory; saving is tried "
                "again every few seconds.",
                error,
            )
        self._disk_full = True
        self._announced = set(held)
        self._emit(_DiskFull(tuple(held)))
        self._wake.set()  # the dispatcher goes on to saving what is held

    async def _requeue_leftovers(self) -> None:
        """Set back to `queued` the rows a failed batch could not (or mark_running skips them)."""
        if self._unrequeued:
            ids = sorted(self._unrequeued)
            await self.generations.requeue(ids)
            self._unrequeued.difference_update(ids)

    async def _recover_from_full_disk(self) -> None:
        """Save the held results, oldest first; raises DiskFullError while there is no space."""
        await self._requeue_leftovers()
        if not self._held:
            await self.repos.images.probe()
        while self._held:
            entry, result = self._held[0]
            try:
                gen = await self.generations.save_result(entry.gen_id, result)
            except DiskFullError:
                raise
            except StoreError as error:
                log.error("Could not record the result of #%d: %s", entry.gen_id, error)
                gen = None
            self._held.pop(0)
            if gen is not None:
                self._emit(_Finished(gen, result))
        self._disk_full = False
        self._announced = set()
        log.info("There is space on the disk again; saving and posting go on")
        self._emit(_DiskOk())

    def _start_batch(self, slot: Slot) -> None:
        """Pop the next fair batch for this worker and run it in its own task."""
        batch = self.queue.pop_batch(self.max_batch, lookahead=self.lookahead)
        if not batch:
            self.workers.release(slot)
            return
        # Visible as running at once, so a cancel arriving now reaches it.
        running = _Running(
            list(batch), time.monotonic(), sum(e.cost for e in batch), slot.name, slot, list(batch)
        )
        number = next(self._batch_numbers)
        self._running[number] = running
        task = asyncio.create_task(self._batch_task(number, running), name=f"easel-batch-{number}")
        running.task = task
        self._tasks.add(task)
        self._not_busy.clear()
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._not_busy.set()

    async def _batch_task(self, number: int, running: _Running) -> None:
        try:
            await self._run_batch(running)
            self.batches_run += 1
        except asyncio.CancelledError:
            raise  # a stop or a crash: the database keeps them `running` for recovery
        except Exception as error:
            # The database failed (disk full, …): what was not recorded goes back in the
            # queue; this worker waits a moment before it takes the next batch.
            if isinstance(error, DiskFullError):
                self._note_disk_full(error)
            else:
                log.exception("Dispatcher error; retrying in 1 s")
            unfinished = [e for e in running.taken if e.gen_id not in running.recorded]
            self.queue.restore(unfinished)
            self._running.pop(number, None)
            try:
                await self.generations.requeue([e.gen_id for e in unfinished])
            except Exception:
                # e.g. the disk is full: done before the next batch, or they would be
                # skipped as "not queued any more".
                self._unrequeued.update(e.gen_id for e in unfinished)
            self._wake.set()
            await asyncio.sleep(1.0)
        finally:
            self._running.pop(number, None)
            if running.slot is not None:
                self.workers.release(running.slot)
                running.slot = None

    async def _run_batch(self, running: _Running) -> None:
        """Mark running, run on the worker, record each result (in that order)."""
        batch = running.taken
        # Durable first: `running` before the worker sees anything.
        started = {gen.id: gen for gen in await self.generations.mark_running(running.ids())}
        for entry in batch:
            if entry.gen_id not in started:
                log.warning("#%d was not queued in the database any more; skipped", entry.gen_id)
                running.recorded.add(entry.gen_id)
        for gen in started.values():
            self._emit(_Started(gen))
        requests: list[GenerationRequest] = []
        runnable: list[QueueEntry] = []
        for entry in batch:
            if entry.gen_id not in started:
                continue
            try:
                request = entry.request
                if request.needs_image and request.init_image is None:
                    request = await self.repos.images.load_request(started[entry.gen_id])
            except StoreError as error:
                await self._finish(
                    running, entry, GenerationResult(str(entry.gen_id), error=str(error))
                )
                continue
            requests.append(dataclasses.replace(request, job_id=str(entry.gen_id)))
            runnable.append(entry)
        # Cancelled before the worker got them: never run.
        for entry in [e for e in runnable if e.gen_id in running.cancelled]:
            await self._finish(running, entry, GenerationResult(str(entry.gen_id), cancelled=True))
        requests = [r for r in requests if int(r.job_id) not in running.cancelled]
        runnable = [e for e in runnable if e.gen_id not in running.cancelled]
        running.entries = runnable
        running.cost = sum(e.cost for e in runnable)
        if not runnable:
            return
        results, elapsed = await self._call_workers(running, requests)
        # The worker is free for its next batch while these are encoded and recorded.
        running.recording = True
        if running.slot is not None:
            self.workers.release(running.slot)
            running.slot = None
        # PNG encoding (PIL releases the GIL) in threads, one per job, off the event loop.
        unencoded = [r for r in results if any(image.raw is not None for image in r.images)]
        await asyncio.gather(*(asyncio.to_thread(_encode, r) for r in unencoded))
        by_id = {result.job_id: result for result in results}
        ok_cost, clean = 0, True
        for entry in runnable:
            result = by_id.get(str(entry.gen_id))
            if result is None:
                result = GenerationResult(
                    str(entry.gen_id), error="The image worker returned no result for this job."
                )
            elif entry.gen_id in running.cancelled and not result.cancelled:
                # Cancelled after the worker made it, before it was recorded: still in time.
                result = dataclasses.replace(result, cancelled=True, images=[])
            if result.ok:
                ok_cost += entry.cost
            else:
                clean = False
            await self._finish(running, entry, result)
        if clean and elapsed is not None:
            self._measure(running.worker, ok_cost, elapsed)

    async def _call_workers(
        self, running: _Running, requests: list[GenerationRequest]
    ) -> tuple[list[GenerationResult], float | None]:
        """Run the batch on its worker; if that worker dies, once more on the first free one
        (ahead of new batches). Returns the results and the seconds of the attempt that
        answered (None if none did)."""
        answered: list[GenerationResult] = []
        retry: asyncio.Future[Slot] | None = None
        for attempt in (1, 2):
            slot = running.slot
            if slot is None and retry is not None:  # a retry: the first free worker
                slot = running.slot = await self._retry_slot(running, requests, retry)
                # Cancelled while it waited: not run again.
                gone = [r for r in requests if int(r.job_id) in running.cancelled]
                answered += [GenerationResult(r.job_id, cancelled=True) for r in gone]
                requests = [r for r in requests if r not in gone]
                if slot is None or not requests:
                    return answered, None
                running.worker = slot.name
            assert slot is not None
            running.started = time.monotonic()
            running.progress = 0.0
            try:
                results = await slot.run(requests, on_progress=self._on_progress)
            except WorkerCrashed:
                running.slot = None
                if attempt == 1:  # in line first, so even its own restart cannot go elsewhere
                    retry = self.workers.reserve(retry=True)
                self.workers.release(slot, crashed=True)
                # A warning: the batch is tried again; failing it twice is the error.
                (log.warning if attempt == 1 else log.error)(
                    "Worker %s crashed running jobs %s (attempt %d)",
                    slot.name,
                    [r.job_id for r in requests],
                    attempt,
                )
                # Cancelled while the worker died: not run again.
                gone = [r for r in requests if int(r.job_id) in running.cancelled]
                answered += [GenerationResult(r.job_id, cancelled=True) for r in gone]
                requests = [r for r in requests if r not in gone]
                if not requests:
                    if retry is not None:
                        self.workers.give_up(retry)
                    return answered, None
                continue
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.exception("The worker failed on jobs %s", [r.job_id for r in requests])
                message = f"The image worker failed unexpectedly ({type(error).__name__}: {error})."
                results = [GenerationResult(job_id=r.job_id, error=message) for r in requests]
            elapsed = time.monotonic() - running.started
            for result in results:
                result.attempts = max(result.attempts, attempt)
            return answered + results, elapsed
        failed = [GenerationResult(r.job_id, error=CRASHED_TWICE, attempts=2) for r in requests]
        return answered + failed, None

    async def _retry_slot(
        self, running: _Running, requests: list[GenerationRequest], acquire: asyncio.Future[Slot]
    ) -> Slot | None:
        """The worker reserved for a retry once it is free, or None once every job of it is
        cancelled (a member need not wait for a worker to come back to see the cancel done)."""
        waiters: list[asyncio.Task[Literal[True]]] = []
        try:
            while not all(int(r.job_id) in running.cancelled for r in requests):
                running.cancel_arrived.clear()
                waiters.append(asyncio.ensure_future(running.cancel_arrived.wait()))
                either: set[asyncio.Future[Any]] = {acquire, waiters[-1]}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if acquire.done():
                    return acquire.result()
        except asyncio.CancelledError:
            self.workers.give_up(acquire)
            raise
        finally:
            for waiter in waiters:
                waiter.cancel()
        self.workers.give_up(acquire)  # a worker that came just as the last job was cancelled
        return None

    def _on_progress(
        self, job_id: str, step: int, total: int, preview: bytes | None = None
    ) -> None:
        try:
            gen_id = int(job_id)
        except (TypeError, ValueError):
            return
        if preview is not None:
            self._previews[gen_id] = preview
        running = self._batch_of(gen_id)
        if running is not None and total:
            running.progress = max(running.progress, min(1.0, step / total))
        first = gen_id not in self._progress
        self._progress[gen_id] = (int(step), int(total))
        if first:
            self._emit(_Progressed(gen_id))

    async def _finish(self, running: _Running, entry: QueueEntry, result: GenerationResult) -> None:
        """Record the outcome, then tell the listeners (never the other way round)."""
        running.saving.add(entry.gen_id)
        try:
            gen = await self.generations.save_result(entry.gen_id, result)
        except DiskFullError as error:
            # Kept, not run again: saved (then delivered) as soon as there is space.
            running.recorded.add(entry.gen_id)
            self._held.append((entry, result))
            self._note_disk_full(error)
            return
        except StoreError as error:
            log.error("Could not record the result of #%d: %s", entry.gen_id, error)
            return
        running.recorded.add(entry.gen_id)
        if gen is not None:
            self._emit(_Finished(gen, result))

    def _measure(self, worker: str, cost: int, seconds: float) -> None:
        """Fold one batch's measured cost per second into the moving averages: the worker's
        own and one worker's typical speed (the guess for workers not measured yet)."""
        if cost <= 0 or seconds <= 0:
            return
        alpha = self.eta_smoothing
        rate = cost / seconds
        self._rates[worker] = (1 - alpha) * self._rate_of(worker) + alpha * rate
        self.cost_per_second = (1 - alpha) * self.cost_per_second + alpha * rate
