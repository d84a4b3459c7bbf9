"""The durable fair queue and the dispatcher that feeds the inference worker.

`Scheduler` wraps `FairQueue` with the database (every state change is written before it is
acted on) and the worker. It does not decide who may queue: `bot/services/admission.py` does,
then calls `submit`. Nothing here imports discord or torch; the worker is anything with `run()`,
`cancel()`, `wait_ready()` and `readiness()` (`WorkerLike`).

    scheduler = Scheduler(repos, worker, max_batch=4, batch_window=0.04)
    scheduler.add_listener(listener)   # a SchedulerListener
    await scheduler.recover()          # queued/running jobs from the last run, in order
    await scheduler.start()
    with scheduler.arriving(request):  # admission deciding: a batch may wait for it
        gen = await scheduler.submit(request, origin)
    …
    await scheduler.stop()

Two stages: the dispatcher hands one batch at a time to the worker and takes the next as soon
as the worker returns; the finisher encodes the PNGs and records the results (in order) while
the next batch runs, so the GPU does not wait for the bot's bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from bot.db import Repositories, StoreError
from bot.domain import Generation, JobOrigin, Status
from inference.engine import encode_pngs
from inference.request import GenerationRequest, GenerationResult
from inference.worker import JobProgress, Readiness

from .fair import FairQueue, QueueEntry

log = logging.getLogger(__name__)

# A job interrupted this many times (the bot died while it ran) is failed instead of retried.
MAX_RUNS = 3
# Seconds `stop()` gives the finisher to record batches the worker already made.
RECORD_GRACE = 10.0


@runtime_checkable
class WorkerLike(Protocol):
    """What the scheduler needs of `inference.worker.Worker`."""

    async def run(
        self, batch: list[GenerationRequest], on_progress: JobProgress | None = None
    ) -> list[GenerationResult]: ...

    def cancel(self, job_id: str) -> None: ...

    async def wait_ready(self) -> None:
        """Return once the model is loaded (raise if it cannot be)."""

    def readiness(self) -> Readiness:
        """Loaded, or how far loading has got."""


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


_Event = _Queued | _Started | _Progressed | _Finished


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
    entries: list[QueueEntry]
    started: float
    cost: int
    progress: float = 0.0  # fraction of the batch's steps done
    cancelled: set[int] = field(default_factory=set)

    def ids(self) -> list[int]:
        return [entry.gen_id for entry in self.entries]


@dataclass(eq=False)
class _Ran:
    """A batch the worker has finished, waiting for the finisher to record it."""

    entries: list[QueueEntry]
    results: list[GenerationResult]
    seconds: float
    cancelled: set[int] = field(default_factory=set)  # cancelled after the worker finished
    saving: set[int] = field(default_factory=set)  # being written: too late to cancel
    recorded: set[int] = field(default_factory=set)


class Scheduler:
    """The durable fair queue: submit, cancel, pause, positions/ETA, recovery, dispatch."""

    def __init__(
        self,
        repos: Repositories,
        worker: WorkerLike,
        *,
        max_batch: int = 4,
        quantum: int = 1,
        initial_cost_per_second: float = 10e6,
        eta_smoothing: float = 0.3,
        lookahead: int | None = None,
        max_runs: int = MAX_RUNS,
        batch_window: float = 0.0,
    ):
        """Cost is pixels × steps × images, so `initial_cost_per_second` =
        settings.queue.initial_mpix_steps_per_second × 1e6 (the ETA's first guess until a batch
        has been measured). `batch_window`: seconds an idle worker may wait for compatible
        requests that admission is still deciding on, to fill its batch."""
        self.repos = repos
        self.generations = repos.generations
        self.worker = worker
        self.max_batch = max(1, int(max_batch))
        self.lookahead = lookahead
        self.max_runs = max(1, int(max_runs))
        self.batch_window = max(0.0, float(batch_window))
        self._arriving: Counter[tuple[Any, ...]] = Counter()  # batch keys being admitted
        self.queue = FairQueue(quantum)
        self.cost_per_second = float(initial_cost_per_second)
        self.eta_smoothing = float(eta_smoothing)
        self._paused = False
        self._listeners: list[SchedulerListener] = []
        self._running: _Running | None = None
        self._wake = asyncio.Event()
        self._events: asyncio.Queue[_Event] = asyncio.Queue()
        self._progress: dict[int, tuple[int, int]] = {}
        self._previews: dict[int, bytes] = {}  # the latest preview image of a running job
        self._dispatcher: asyncio.Task[None] | None = None
        self._notifier: asyncio.Task[None] | None = None
        self._finisher: asyncio.Task[None] | None = None
        self._ran: asyncio.Queue[_Ran] = asyncio.Queue()
        self._finishing: dict[int, _Ran] = {}  # job id → its batch, until recorded
        self._busy = False
        self._not_busy = asyncio.Event()
        self._not_busy.set()
        self._recorded: set[int] = set()
        self.batches_run = 0

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

    @staticmethod
    async def _deliver(
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
        """Jobs on the worker, and those it has finished that are still being recorded."""
        running = set() if self._running is None else {e.gen_id for e in self._running.entries}
        return running | set(self._finishing)

    @property
    def busy(self) -> bool:
        """A batch is being taken, run or recorded."""
        return self._busy or self._ran.qsize() > 0 or bool(self._finishing)

    def readiness(self) -> Readiness:
        """Whether the model is loaded (members are told while it loads)."""
        return self.worker.readiness()

    def _load_seconds_left(self) -> float:
        readiness = self.worker.readiness()
        return 0.0 if readiness.ready else readiness.seconds_left or 0.0

    @property
    def started(self) -> bool:
        return self._dispatcher is not None and not self._dispatcher.done()

    def position(self, gen_id: int) -> int | None:
        """0 = running now, 1 = starts next, …; None if neither waiting nor running."""
        if gen_id in self.running_ids:
            return 0
        position = self.queue.position(gen_id)
        return None if position is None else position + 1

    def _running_remaining_cost(self) -> float:
        running = self._running
        if running is None:
            return 0.0
        by_progress = running.cost * (1.0 - running.progress)
        elapsed = time.monotonic() - running.started
        by_clock = max(0.0, running.cost - elapsed * self.cost_per_second)
        return min(by_progress, by_clock) if running.progress > 0 else by_clock

    def eta_seconds(self, gen_id: int) -> float | None:
        """Seconds until the job is expected to be finished (from the measured cost per
        second, plus what is left of loading the model); None if it is neither waiting nor
        running. Costs no more than a position: the queue keeps its order."""
        if gen_id in self._finishing:
            return 0.0
        remaining = self._running_remaining_cost()
        if gen_id in self.running_ids:
            return remaining / self.cost_per_second
        ahead = self.queue.cost_ahead(gen_id)
        entry = self.queue.get(gen_id)
        if ahead is None or entry is None:
            return None
        cost = remaining + ahead + entry.cost
        return self._load_seconds_left() + cost / self.cost_per_second

    def _running_infos(self) -> list[JobInfo]:
        remaining = self._running_remaining_cost() / self.cost_per_second
        infos = [
            JobInfo(e.gen_id, e.user_id, Status.RUNNING, 0, 0.0, e.request)
            for ran in dict.fromkeys(self._finishing.values())
            for e in ran.entries
            if e.gen_id in self._finishing
        ]
        if self._running is not None:
            infos += [
                JobInfo(e.gen_id, e.user_id, Status.RUNNING, 0, remaining, e.request)
                for e in self._running.entries
            ]
        return infos

    def jobs(self) -> list[JobInfo]:
        """Every running and waiting job, in the order they will finish (O(n): for
        listings; a member's own jobs are `user_jobs`)."""
        infos = self._running_infos()
        rate = self.cost_per_second
        done_cost = self._running_remaining_cost()
        wait = self._load_seconds_left()
        for i, entry in enumerate(self.queue.order(), start=1):
            done_cost += entry.cost
            infos.append(
                JobInfo(
                    entry.gen_id,
                    entry.user_id,
                    Status.QUEUED,
                    i,
                    wait + done_cost / rate,
                    entry.request,
                )
            )
        return infos

    def user_jobs(self, user_id: int) -> list[JobInfo]:
        """A member's running and waiting jobs with positions and ETAs."""
        infos = [info for info in self._running_infos() if info.user_id == user_id]
        for entry in self.queue.entries_of(user_id):
            position, eta = self.position(entry.gen_id), self.eta_seconds(entry.gen_id)
            assert position is not None and eta is not None
            infos.append(
                JobInfo(entry.gen_id, user_id, Status.QUEUED, position, eta, entry.request)
            )
        return infos

    # -- submitting ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def arriving(self, request: GenerationRequest) -> Iterator[None]:
        """Held by admission while it decides on a request: an idle worker whose batch has
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
        running = self._running
        if running is not None:
            for entry in running.entries:
                if entry.gen_id == gen_id:
                    if user_id is not None and entry.user_id != user_id:
                        return False
                    running.cancelled.add(gen_id)
                    self.worker.cancel(str(gen_id))
                    return True
        ran = self._finishing.get(gen_id)
        if ran is not None and gen_id not in ran.saving:  # made, not written: still in time
            owner = next(e.user_id for e in ran.entries if e.gen_id == gen_id)
            if user_id is not None and owner != user_id:
                return False
            ran.cancelled.add(gen_id)
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
            targets += [i.gen_id for i in self._running_infos() if i.user_id == user_id]
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
    #
    # Its single-worker assumptions, all in this section: one batch on the worker at a time
    # (`self._running`), taken when the worker is loaded and free; the finisher records it
    # while the next one runs. A pool of workers would run one `_dispatch_loop` per worker,
    # each with its own `_running`, over the same queue, finisher and listeners.

    async def start(self) -> None:
        """Start the dispatcher, the finisher and the listener task (idempotent)."""
        if self._notifier is None or self._notifier.done():
            self._notifier = asyncio.create_task(self._notify_loop(), name="easel-notifier")
        if self._finisher is None or self._finisher.done():
            self._finisher = asyncio.create_task(self._finish_loop(), name="easel-finisher")
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="easel-dispatcher")
        self._wake.set()

    async def stop(self, *, grace: float = 0.0) -> None:
        """Stop the dispatcher, waiting up to `grace` seconds for a running batch to finish
        and be recorded.

        Whatever is still running stays `running` in the database and is queued again by the
        next `recover()`; nothing is lost. Pending listener events are delivered within `grace`.
        """
        dispatcher, finisher, notifier = self._dispatcher, self._finisher, self._notifier
        self._dispatcher = self._finisher = self._notifier = None
        deadline = time.monotonic() + grace
        if dispatcher is not None:
            if grace > 0 and self._busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._not_busy.wait()), grace)
            dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatcher
        for task, drained in ((finisher, self._ran), (notifier, self._events)):
            if task is None:
                continue
            left = deadline - time.monotonic()
            if task is finisher:
                # Batches the worker has finished are recorded (milliseconds), not run again.
                left = max(left, RECORD_GRACE)
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(drained.join(), left)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._running = None
        self._busy = False
        self._finishing.clear()

    async def idle(self) -> None:
        """Wait until nothing runs, nothing can start (queue empty or paused), every result is
        recorded and every event has reached the listeners. Needs `start()`."""
        while True:
            await self._ran.join()
            await self._events.join()
            if not self.busy and (self.waiting_count == 0 or self._paused):
                await asyncio.sleep(0)
                if not self.busy and self._events.empty():
                    return
            await asyncio.sleep(0.005)

    async def _dispatch_loop(self) -> None:
        while True:
            try:
                await self._wait_for_work()
                await self._run_next_batch()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database failed (disk full, …): keep the bot alive, try again shortly.
                log.exception("Dispatcher error; retrying in 1 s")
                self._running = None
                self._busy = False
                self._not_busy.set()
                await asyncio.sleep(1.0)

    async def _wait_for_work(self) -> None:
        """Until there is a job to start, the model is loaded, and the batching window (if
        any) has given compatible requests their moment."""
        while True:
            while self._paused or not self.queue:
                self._wake.clear()
                await self._wake.wait()
            await self._wait_for_worker()
            await self._batching_window()
            if not self._paused and self.queue:
                return

    async def _wait_for_worker(self) -> None:
        try:
            await self.worker.wait_ready()
        except Exception as error:  # the model cannot load: `python -m bot` stops on this
            log.warning("The worker is not ready (%s); jobs wait", error)
            await asyncio.sleep(5.0)

    async def _batching_window(self) -> None:
        """Wait up to `batch_window` while the head's batch has room and a compatible request
        is still being admitted; never when the batch is full or nothing compatible comes."""
        if self.batch_window <= 0:
            return
        deadline = time.monotonic() + self.batch_window
        while True:
            head = self.queue.peek()
            if head is None or self._paused:
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

    async def _run_next_batch(self) -> None:
        self._busy = True
        self._not_busy.clear()
        try:
            batch = self.queue.pop_batch(self.max_batch, lookahead=self.lookahead)
            if not batch:
                return
            try:
                await self._run_batch(batch)
            except asyncio.CancelledError:
                raise  # a stop or a crash: the database keeps them `running` for recovery
            except Exception:
                # The database failed mid-way: what was not recorded goes back in the queue.
                await self._put_back([e for e in batch if e.gen_id not in self._recorded])
                raise
            self.batches_run += 1
        finally:
            self._running = None
            self._busy = False
            self._not_busy.set()

    async def _put_back(self, entries: list[QueueEntry]) -> None:
        self.queue.restore(entries)
        with contextlib.suppress(Exception):
            await self.generations.requeue([e.gen_id for e in entries])
        self._wake.set()

    async def _run_batch(self, batch: list[QueueEntry]) -> None:
        """Mark running, run on the worker, hand the results to the finisher."""
        self._recorded = set()
        # Visible as running at once, so a cancel arriving now reaches it.
        running = self._running = _Running(batch, time.monotonic(), sum(e.cost for e in batch))
        # Durable first: `running` before the worker sees anything.
        started = {gen.id: gen for gen in await self.generations.mark_running(running.ids())}
        for entry in batch:
            if entry.gen_id not in started:
                log.warning("#%d was not queued in the database any more; skipped", entry.gen_id)
                self._recorded.add(entry.gen_id)
        for gen in started.values():
            self._emit(_Started(gen))
        requests: list[GenerationRequest] = []
        runnable: list[QueueEntry] = []
        for entry in batch:
            if entry.gen_id not in started:
                continue
            try:
                request = entry.request
                if request.mode != "txt2img" and request.init_image is None:
                    request = await self.repos.images.load_request(started[entry.gen_id])
            except StoreError as error:
                await self._finish(entry, GenerationResult(str(entry.gen_id), error=str(error)))
                continue
            requests.append(dataclasses.replace(request, job_id=str(entry.gen_id)))
            runnable.append(entry)
        # Cancelled before the worker got them: never run.
        for entry in [e for e in runnable if e.gen_id in running.cancelled]:
            await self._finish(entry, GenerationResult(str(entry.gen_id), cancelled=True))
        requests = [r for r in requests if int(r.job_id) not in running.cancelled]
        runnable = [e for e in runnable if e.gen_id not in running.cancelled]
        running.entries = runnable
        running.cost = sum(e.cost for e in runnable)
        if not runnable:
            return
        running.started = time.monotonic()
        results = await self._call_worker(requests)
        ran = _Ran(runnable, results, time.monotonic() - running.started)
        for entry in runnable:
            self._finishing[entry.gen_id] = ran
            self._recorded.add(entry.gen_id)  # from here on the finisher answers for it
        self._ran.put_nowait(ran)

    async def _call_worker(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        try:
            results = await self.worker.run(requests, on_progress=self._on_progress)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("The worker failed on jobs %s", [r.job_id for r in requests])
            message = f"The image worker failed unexpectedly ({type(error).__name__}: {error})."
            return [GenerationResult(job_id=r.job_id, error=message) for r in requests]
        return results

    # -- the finisher --------------------------------------------------------------------------

    async def _finish_loop(self) -> None:
        """Record finished batches in order, while the worker is on the next one."""
        while True:
            ran = await self._ran.get()
            try:
                await self._record(ran)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Could not record a batch; its jobs are queued again")
                await self._put_back([e for e in ran.entries if e.gen_id not in ran.recorded])
            finally:
                for entry in ran.entries:
                    self._finishing.pop(entry.gen_id, None)
                self._ran.task_done()

    async def _record(self, ran: _Ran) -> None:
        # PNG encoding (PIL releases the GIL) in threads, one per job, off the event loop.
        await asyncio.gather(*(asyncio.to_thread(encode_pngs, r) for r in ran.results))
        by_id = {result.job_id: result for result in ran.results}
        ok_cost, clean = 0, True
        for entry in ran.entries:
            result = by_id.get(str(entry.gen_id))
            if result is None:
                result = GenerationResult(
                    str(entry.gen_id), error="The image worker returned no result for this job."
                )
            ran.saving.add(entry.gen_id)
            if entry.gen_id in ran.cancelled:
                result = dataclasses.replace(result, cancelled=True, images=[])
            if result.ok:
                ok_cost += entry.cost
            else:
                clean = False
            await self._finish(entry, result, ran.recorded)
            self._finishing.pop(entry.gen_id, None)
        if clean:
            self._measure(ok_cost, ran.seconds)

    def _on_progress(
        self, job_id: str, step: int, total: int, preview: bytes | None = None
    ) -> None:
        try:
            gen_id = int(job_id)
        except (TypeError, ValueError):
            return
        if preview is not None:
            self._previews[gen_id] = preview
        running = self._running
        if running is not None and total:
            running.progress = max(running.progress, min(1.0, step / total))
        first = gen_id not in self._progress
        self._progress[gen_id] = (int(step), int(total))
        if first:
            self._emit(_Progressed(gen_id))

    async def _finish(
        self, entry: QueueEntry, result: GenerationResult, recorded: set[int] | None = None
    ) -> None:
        """Record the outcome, then tell the listeners (never the other way round)."""
        try:
            gen = await self.generations.save_result(entry.gen_id, result)
        except StoreError as error:
            log.error("Could not record the result of #%d: %s", entry.gen_id, error)
            return
        (self._recorded if recorded is None else recorded).add(entry.gen_id)
        if gen is not None:
            self._emit(_Finished(gen, result))

    def _measure(self, cost: int, seconds: float) -> None:
        """Fold one batch's measured cost per second into the moving average."""
        if cost <= 0 or seconds <= 0:
            return
        alpha = self.eta_smoothing
        self.cost_per_second = (1 - alpha) * self.cost_per_second + alpha * cost / seconds
