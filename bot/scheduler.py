"""The fair queue and the dispatcher that feeds the inference worker.

`FairQueue` is pure and in memory: deficit round robin (DRR) over users, where a job's cost is
`GenerationRequest.cost` (width × height × steps × count). `Scheduler` wraps it with the store
(the durable truth: every state change is written before it is acted on) and the worker.

Nothing here imports discord or torch; the worker is anything with `run()` and `cancel()`.

    scheduler = Scheduler(store, worker, max_batch=4, max_waiting_per_user=5)
    scheduler.add_listener(bot_listener)
    await scheduler.recover()          # queued/running jobs from the last run, in order
    await scheduler.start()
    gen = await scheduler.submit(request, user_id=…, guild_id=…, channel_id=…)
    …
    await scheduler.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from inference.request import GenerationRequest, GenerationResult

from .store import Generation, Kind, Store, StoreError

log = logging.getLogger(__name__)

PAUSED_STATE_KEY = "queue.paused"
# A job interrupted this many times (the bot died while it ran) is failed instead of retried.
MAX_RUNS = 3


# ---------------------------------------------------------------------------------------------
# The fair queue


@dataclass(eq=False)
class QueueEntry:
    """One waiting job in memory. `request` carries the source image of vary/upscale jobs."""

    gen_id: int
    user_id: int
    request: GenerationRequest
    cost: int
    batch_key: tuple[Any, ...]
    enqueued_at: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, gen_id: int, user_id: int, request: GenerationRequest) -> QueueEntry:
        request = dataclasses.replace(request, job_id=str(gen_id))
        return cls(gen_id, user_id, request, int(request.cost), request.batch_key())


class _User:
    """A backlogged user of the DRR ring: its place in the ring, its credit, its FIFO of jobs.

    The deficit at the user's visit in round r is `r * quantum - base`; serving a job adds its
    cost to `base`. Users are visited in `seq` order every round.
    """

    __slots__ = ("base", "jobs", "seq", "user_id")

    def __init__(self, user_id: int, seq: int, base: int):
        self.user_id = user_id
        self.seq = seq
        self.base = base
        self.jobs: deque[QueueEntry] = deque()


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


class FairQueue:
    """Deficit round robin over users with cost-weighted jobs, batching compatible jobs.

    Each round visits every backlogged user once, in the order they became backlogged, and
    gives it `quantum` cost units of credit; a user runs its next job when its credit covers the
    job's cost. Rounds in which nobody could run are skipped arithmetically, so the quantum can
    be as small as one cost unit (the default): that is DRR's finest setting, where over any
    stretch in which N users stay backlogged each one's served cost stays within one job's cost
    of an equal share, and a newcomer whose job is no bigger than the others' next jobs runs in
    the very next batch slot. A larger quantum lets a user run several small jobs in a row.

    Each user's jobs run in the order they were sent (FIFO per user).
    """

    def __init__(self, quantum: int = 1):
        if quantum < 1:
            raise ValueError("quantum must be at least 1 cost unit")
        self.quantum = int(quantum)
        self._users: dict[int, _User] = {}
        self._entries: dict[int, QueueEntry] = {}
        self._round = 0
        self._cursor = -1  # ring position (seq) of the user whose visit is in progress
        self._next_seq = 0
        self._before_pop: tuple[int, int] | None = None
        self._version = 0
        self._cache_version = -1
        self._order: list[QueueEntry] = []
        self._index: dict[int, int] = {}
        self._prefix: list[int] = []
        # Cost dispatched per user since this queue was made (for tests and benchmarks).
        self.served: dict[int, int] = {}

    # -- contents ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, gen_id: object) -> bool:
        return gen_id in self._entries

    def get(self, gen_id: int) -> QueueEntry | None:
        return self._entries.get(gen_id)

    def ids(self) -> set[int]:
        return set(self._entries)

    def users(self) -> list[int]:
        """Users with waiting jobs, in ring order."""
        return [u.user_id for u in sorted(self._users.values(), key=lambda u: u.seq)]

    def waiting_for(self, user_id: int) -> int:
        user = self._users.get(user_id)
        return 0 if user is None else len(user.jobs)

    def entries_of(self, user_id: int) -> list[QueueEntry]:
        user = self._users.get(user_id)
        return [] if user is None else list(user.jobs)

    # -- changes -------------------------------------------------------------------------------

    def push(self, entry: QueueEntry) -> None:
        """Add a job at the end of its user's FIFO; a user new to the ring joins at its end."""
        if entry.gen_id in self._entries:
            raise ValueError(f"job {entry.gen_id} is already queued")
        if entry.cost < 1:
            raise ValueError("a job must cost at least 1")
        user = self._users.get(entry.user_id)
        if user is None:
            # First visit in the current round, with one quantum of credit.
            user = _User(entry.user_id, self._next_seq, (self._round - 1) * self.quantum)
            self._next_seq += 1
            self._users[entry.user_id] = user
        user.jobs.append(entry)
        self._entries[entry.gen_id] = entry
        self._version += 1

    def remove(self, gen_id: int) -> QueueEntry | None:
        """Take a waiting job out (cancel); None if it is not waiting."""
        entry = self._entries.pop(gen_id, None)
        if entry is None:
            return None
        user = self._users[entry.user_id]
        for i, candidate in enumerate(user.jobs):
            if candidate is entry:
                del user.jobs[i]
                break
        if not user.jobs:
            del self._users[entry.user_id]
        self._version += 1
        return entry

    def restore(self, entries: list[QueueEntry]) -> None:
        """Put popped jobs back at the front of their users' queues, as if never taken (used
        when a batch could not be started or recorded)."""
        if self._before_pop is not None:
            self._round, self._cursor = self._before_pop
            self._before_pop = None
        for entry in reversed(entries):
            if entry.gen_id in self._entries:
                continue
            user = self._users.get(entry.user_id)
            if user is None:
                user = _User(entry.user_id, self._next_seq, (self._round - 1) * self.quantum)
                self._next_seq += 1
                self._users[entry.user_id] = user
            else:
                user.base -= entry.cost
            user.jobs.appendleft(entry)
            self._entries[entry.gen_id] = entry
            self.served[entry.user_id] = self.served.get(entry.user_id, 0) - entry.cost
        self._version += 1

    def clear(self) -> list[QueueEntry]:
        entries = list(self._entries.values())
        self._users.clear()
        self._entries.clear()
        self._version += 1
        return entries

    # -- the fair order ------------------------------------------------------------------------

    def _simulate(self) -> Iterator[tuple[QueueEntry, int]]:
        """Yield (entry, round) in the order DRR would serve them, without changing anything."""
        q = self.quantum
        heap: list[tuple[int, int, int, int, _User]] = []
        for user in self._users.values():
            visit = self._round if user.seq >= self._cursor else self._round + 1
            ready = _ceil_div(user.base + user.jobs[0].cost, q)
            heap.append((max(visit, ready), user.seq, 0, user.base, user))
        heapq.heapify(heap)
        while heap:
            rnd, seq, idx, base, user = heapq.heappop(heap)
            entry = user.jobs[idx]
            yield entry, rnd
            base += entry.cost
            idx += 1
            if idx < len(user.jobs):
                # The same visit goes on while the credit lasts, else a later round.
                ready = _ceil_div(base + user.jobs[idx].cost, q)
                heapq.heappush(heap, (max(rnd, ready), seq, idx, base, user))

    def _refresh(self) -> None:
        if self._cache_version == self._version:
            return
        self._order = [entry for entry, _ in self._simulate()]
        self._index = {entry.gen_id: i for i, entry in enumerate(self._order)}
        prefix = [0]
        for entry in self._order:
            prefix.append(prefix[-1] + entry.cost)
        self._prefix = prefix
        self._cache_version = self._version

    def order(self) -> list[QueueEntry]:
        """Every waiting job in the order it will start (cached until the queue changes)."""
        self._refresh()
        return list(self._order)

    def position(self, gen_id: int) -> int | None:
        """0 = starts next; None if not waiting."""
        if gen_id not in self._entries:
            return None
        self._refresh()
        return self._index[gen_id]

    def cost_ahead(self, gen_id: int) -> int | None:
        """Total cost of the jobs that start before this one (not counting itself)."""
        position = self.position(gen_id)
        return None if position is None else self._prefix[position]

    def peek(self) -> QueueEntry | None:
        for entry, _ in self._simulate():
            return entry
        return None

    def pop_batch(self, max_size: int = 1, *, lookahead: int | None = None) -> list[QueueEntry]:
        """Take the next batch: the head of the fair order first, then compatible jobs (equal
        `batch_key`) in fair order, up to `max_size`, looking at most `lookahead` jobs ahead.

        A user's jobs never overtake each other. Jobs taken ahead of their turn are charged to
        their users' credit, so batching does not change anyone's long-run share.
        """
        if not self._entries:
            return []
        max_size = max(1, int(max_size))
        if lookahead is None:
            lookahead = max(32, 8 * max_size)
        order = self._simulate()
        head, head_round = next(order)
        batch = [head]
        if max_size > 1:
            seen = {head.user_id: 1}
            taken = {head.user_id: 1}
            for scanned, (entry, _) in enumerate(order):
                if len(batch) >= max_size or scanned >= lookahead:
                    break
                uid = entry.user_id
                if entry.batch_key == head.batch_key and seen.get(uid, 0) == taken.get(uid, 0):
                    batch.append(entry)
                    taken[uid] = taken.get(uid, 0) + 1
                seen[uid] = seen.get(uid, 0) + 1
        order.close()
        # The head's visit is now in progress (`restore` can undo this batch).
        self._before_pop = (self._round, self._cursor)
        self._round = head_round
        self._cursor = self._users[head.user_id].seq
        for entry in batch:
            user = self._users[entry.user_id]
            first = user.jobs.popleft()
            assert first is entry, "batch broke a user's FIFO order"
            user.base += entry.cost
            self.served[entry.user_id] = self.served.get(entry.user_id, 0) + entry.cost
            del self._entries[entry.gen_id]
            if not user.jobs:
                del self._users[entry.user_id]
        self._version += 1
        return batch


# ---------------------------------------------------------------------------------------------
# Refusals, listeners, the worker interface


class QueueRefused(Exception):
    """A request the queue will not take. `message` is one sentence for the member; `reason` a
    code (paused, over_cap, over_quota, banned_user); `generation` the logged refusal."""

    def __init__(self, reason: str, message: str, generation: Generation | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.generation = generation


@runtime_checkable
class WorkerLike(Protocol):
    """What the scheduler needs of `inference.worker.Worker`."""

    async def run(
        self,
        batch: list[GenerationRequest],
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> list[GenerationResult]: ...

    def cancel(self, job_id: str) -> None: ...


class SchedulerListener:
    """Hooks the bot implements (each may be a plain or an async method; all are optional).

    Events are delivered in order by one task, after the store has recorded the change, and
    never block the dispatcher; an exception in a hook is logged and ignored.
    """

    def on_queued(self, gen: Generation) -> Awaitable[None] | None:
        """A job was accepted (its position and ETA: `scheduler.position/eta_seconds`)."""

    def on_started(self, gen: Generation) -> Awaitable[None] | None:
        """A job was handed to the worker (status `running`)."""

    def on_progress(self, gen_id: int, step: int, total: int) -> Awaitable[None] | None:
        """Denoising progress of a running job (coalesced: only the latest step is sent)."""

    def on_preview(self, gen_id: int, png: bytes) -> Awaitable[None] | None:
        """A rough preview of a running job's first image (comes just before an on_progress)."""

    def on_finished(self, gen: Generation, result: GenerationResult) -> Awaitable[None] | None:
        """A job ended: `gen.status` is done, failed or cancelled; images are on disk and in
        `result`. Post the result (or the failure notice), then call
        `store.mark_delivered(gen.id, channel_id=…, message_id=…)`: a done or failed job left
        undelivered is sent to `on_finished` again by the next `recover()`. Cancelled jobs need
        no delivery."""


@dataclass(frozen=True)
class JobInfo:
    """A waiting or running job as `/queue` shows it."""

    gen_id: int
    user_id: int
    status: str  # 'running' or 'queued'
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


# ---------------------------------------------------------------------------------------------
# The scheduler


class Scheduler:
    """The durable fair queue: admission, cancel, pause, positions/ETA, recovery, dispatch."""

    def __init__(
        self,
        store: Store,
        worker: WorkerLike,
        *,
        max_batch: int = 4,
        max_waiting_per_user: int = 0,
        daily_quota: int = 0,
        quantum: int = 1,
        initial_cost_per_second: float = 10e6,
        eta_smoothing: float = 0.3,
        lookahead: int | None = None,
        max_runs: int = MAX_RUNS,
    ):
        """`max_waiting_per_user` and `daily_quota` of 0 mean no limit. Cost is pixels × steps
        × images, so `initial_cost_per_second` = settings.queue.initial_mpix_steps_per_second
        × 1e6 (the ETA's first guess until a batch has been measured)."""
        self.store = store
        self.worker = worker
        self.max_batch = max(1, int(max_batch))
        self.max_waiting_per_user = max(0, int(max_waiting_per_user))
        self.daily_quota = max(0, int(daily_quota))
        self.lookahead = lookahead
        self.max_runs = max(1, int(max_runs))
        self.queue = FairQueue(quantum)
        self.cost_per_second = float(initial_cost_per_second)
        self.eta_smoothing = float(eta_smoothing)
        self._paused = False
        self._listeners: list[Any] = []
        self._running: _Running | None = None
        self._wake = asyncio.Event()
        self._submit_lock = asyncio.Lock()
        self._events: asyncio.Queue[tuple[str, tuple[Any, ...]]] = asyncio.Queue()
        self._progress: dict[int, tuple[int, int]] = {}
        self._previews: dict[int, bytes] = {}  # the latest preview image of a running job
        self._dispatcher: asyncio.Task[None] | None = None
        self._notifier: asyncio.Task[None] | None = None
        self._busy = False
        self._not_busy = asyncio.Event()
        self._not_busy.set()
        self._recorded: set[int] = set()
        self.batches_run = 0

    # -- listeners -----------------------------------------------------------------------------

    def add_listener(self, listener: Any) -> None:
        """Register an object with any of SchedulerListener's hooks."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Any) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _emit(self, hook: str, *args: Any) -> None:
        self._events.put_nowait((hook, args))

    async def _notify_loop(self) -> None:
        while True:
            hook, args = await self._events.get()
            try:
                if hook == "on_progress":
                    latest = self._progress.pop(args[0], None)
                    if latest is None:
                        continue
                    preview = self._previews.pop(args[0], None)
                    if preview is not None:
                        await self._deliver("on_preview", (args[0], preview))
                    args = (args[0], *latest)
                await self._deliver(hook, args)
            finally:
                self._events.task_done()

    async def _deliver(self, hook: str, args: tuple[Any, ...]) -> None:
        for listener in list(self._listeners):
            method = getattr(listener, hook, None)
            if method is None:
                continue
            try:
                outcome = method(*args)
                if inspect.isawaitable(outcome):
                    await outcome
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Listener %r failed in %s", listener, hook)

    # -- state ---------------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def waiting_count(self) -> int:
        """Jobs waiting (not counting the running batch)."""
        return len(self.queue)

    @property
    def running_ids(self) -> set[int]:
        return set() if self._running is None else {e.gen_id for e in self._running.entries}

    @property
    def busy(self) -> bool:
        """A batch is being taken, run or recorded."""
        return self._busy

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
        second); None if it is neither waiting nor running."""
        remaining = self._running_remaining_cost()
        if gen_id in self.running_ids:
            return remaining / self.cost_per_second
        ahead = self.queue.cost_ahead(gen_id)
        if ahead is None:
            return None
        own = self.queue.get(gen_id).cost
        return (remaining + ahead + own) / self.cost_per_second

    def jobs(self) -> list[JobInfo]:
        """Every running and waiting job, in the order they will finish."""
        infos: list[JobInfo] = []
        remaining = self._running_remaining_cost()
        rate = self.cost_per_second
        if self._running is not None:
            for entry in self._running.entries:
                infos.append(
                    JobInfo(
                        entry.gen_id, entry.user_id, "running", 0, remaining / rate, entry.request
                    )
                )
        done_cost = remaining
        for i, entry in enumerate(self.queue.order(), start=1):
            done_cost += entry.cost
            infos.append(
                JobInfo(entry.gen_id, entry.user_id, "queued", i, done_cost / rate, entry.request)
            )
        return infos

    def user_jobs(self, user_id: int) -> list[JobInfo]:
        """A member's running and waiting jobs with positions and ETAs."""
        return [info for info in self.jobs() if info.user_id == user_id]

    # -- admission -----------------------------------------------------------------------------

    async def submit(
        self,
        request: GenerationRequest,
        *,
        user_id: int,
        guild_id: int | None = None,
        channel_id: int | None = None,
        kind: Kind = "imagine",
        parent_id: int | None = None,
        parent_image_index: int | None = None,
        user_name: str | None = None,
    ) -> Generation:
        """Accept a validated request: log it `queued`, queue it, tell the listeners.

        Raises `QueueRefused` (and logs the refusal as `blocked`) when the member is banned in
        this server, the queue is paused, the member has `max_waiting_per_user` jobs waiting,
        has used `daily_quota` requests today (UTC), or `parent_id` does not exist (bad_input).
        Validation and banned words are the caller's checks (log those with
        `store.log_refusal`).
        """
        where = {
            "user_id": user_id,
            "guild_id": guild_id,
            "channel_id": channel_id,
            "kind": kind,
            "parent_id": parent_id,
            "parent_image_index": parent_image_index,
            "user_name": user_name,
        }
        if request.cost < 1:
            raise ValueError("A request must have a positive size, step count and image count.")
        async with self._submit_lock:
            reason, message = await self._refusal(user_id, guild_id)
            if reason is not None:
                gen = await self.store.log_refusal(request, reason=reason, message=message, **where)
                raise QueueRefused(reason, message, gen)
            try:
                gen = await self.store.create_generation(request, **where)
            except StoreError as error:
                if parent_id is None:
                    raise
                # The source generation is unknown: a refusal the member can act on.
                message = f"{error} Check the number and try again."
                gen = await self.store.log_refusal(
                    request, reason="bad_input", message=message, **where
                )
                raise QueueRefused("bad_input", message, gen) from None
            seeded = dataclasses.replace(request, seed=gen.recipe["seed"])
            self.queue.push(QueueEntry.of(gen.id, user_id, seeded))
        self._emit("on_queued", gen)
        self._wake.set()
        return gen

    async def _refusal(self, user_id: int, guild_id: int | None) -> tuple[str | None, str]:
        if guild_id is not None:
            ban = await self.store.active_ban(guild_id, user_id)
            if ban is not None:
                if ban.until is None:
                    return "banned_user", "You are banned from making images in this server."
                return "banned_user", (
                    "You are banned from making images in this server until "
                    f"{ban.until:%Y-%m-%d %H:%M} UTC."
                )
        if self._paused:
            return "paused", (
                "The queue is paused by the moderators; no new images for now, try again later."
            )
        cap = self.max_waiting_per_user
        if cap and self.queue.waiting_for(user_id) >= cap:
            return "over_cap", (
                f"You already have {cap} image{'s' if cap != 1 else ''} waiting, the most "
                "allowed; wait for one to finish or cancel one with /cancel."
            )
        quota = self.daily_quota
        if quota and await self.store.count_today(user_id) >= quota:
            today = datetime.fromtimestamp(self.store.clock(), UTC)
            midnight = (today + timedelta(days=1)).strftime("%Y-%m-%d 00:00")
            return "over_quota", (
                f"You have used all {quota} of today's requests; more from {midnight} UTC."
            )
        return None, ""

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
            gen = await self.store.mark_cancelled(gen_id)
            if gen is not None:
                self._emit("on_finished", gen, GenerationResult(job_id=str(gen_id), cancelled=True))
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
        return False

    async def cancel_user(
        self, user_id: int, *, guild_id: int | None = None, include_running: bool = True
    ) -> list[int]:
        """Cancel a member's jobs (e.g. `/cancel` with no id, or after a ban); returns the ids.

        With `guild_id`, only jobs made in that server.
        """
        targets = [e.gen_id for e in self.queue.entries_of(user_id)]
        if include_running and self._running is not None:
            targets += [e.gen_id for e in self._running.entries if e.user_id == user_id]
        if guild_id is not None:
            gens = {g.id: g for g in await self.store.get_many(targets)}
            targets = [t for t in targets if t in gens and gens[t].guild_id == guild_id]
        return [gen_id for gen_id in targets if await self.cancel(gen_id, user_id=user_id)]

    async def pause(self) -> None:
        """Stop starting new jobs (waiting ones wait; new requests are refused). Survives a
        restart."""
        self._paused = True
        await self.store.set_state(PAUSED_STATE_KEY, "1")

    async def resume(self) -> None:
        self._paused = False
        await self.store.set_state(PAUSED_STATE_KEY, None)
        self._wake.set()

    # -- recovery ------------------------------------------------------------------------------

    async def recover(self, *, redeliver: bool = True) -> list[int]:
        """Queue again the jobs left `queued` or `running` by the last run, in their original
        order (a `running` job was never delivered); a `done` job is never run again.

        A job interrupted `max_runs` times is failed instead. With `redeliver`, finished jobs
        whose result was never posted are sent to the listeners' `on_finished` again. Call it
        before `start()`, after adding the listeners. Returns the ids queued again.
        """
        self._paused = (await self.store.get_state(PAUSED_STATE_KEY)) == "1"
        recovered: list[int] = []
        busy = self.running_ids
        jobs = [g for g in await self.store.jobs_to_recover() if g.id not in busy]
        await self.store.requeue([g.id for g in jobs if g.status == "running"])
        for gen in jobs:
            if gen.id in self.queue:
                continue
            if gen.runs >= self.max_runs:
                failed = await self.store.mark_failed(
                    gen.id,
                    f"This job was interrupted {gen.runs} times while it ran, so it was not "
                    "tried again.",
                )
                if failed is not None and not redeliver:
                    self._emit(
                        "on_finished", failed, GenerationResult(str(gen.id), error=failed.error)
                    )
                continue
            # The source image of vary/upscale is read from disk when its batch starts.
            try:
                entry = QueueEntry.of(gen.id, gen.user_id, gen.request)
                self.queue.push(entry)
            except (TypeError, ValueError) as error:
                log.error("Cannot queue #%d again: %s", gen.id, error)
                await self.store.mark_failed(gen.id, "This job's recipe could not be read back.")
                continue
            recovered.append(gen.id)
        if redeliver:
            for gen in await self.store.undelivered(limit=1000):
                self._emit("on_finished", gen, await self.store.load_result(gen))
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
        """Stop the dispatcher, waiting up to `grace` seconds for a running batch to finish.

        Whatever is still running stays `running` in the store and is queued again by the next
        `recover()`; nothing is lost. Pending listener events are delivered within `grace` too.
        """
        dispatcher, notifier = self._dispatcher, self._notifier
        self._dispatcher = self._notifier = None
        if dispatcher is not None:
            if grace > 0 and self._busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._until_not_busy()), grace)
            dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatcher
        if notifier is not None:
            if grace > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._events.join(), grace)
            notifier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await notifier
        self._running = None
        self._busy = False

    async def _until_not_busy(self) -> None:
        await self._not_busy.wait()

    async def idle(self) -> None:
        """Wait until nothing runs, nothing can start (queue empty or paused) and every event
        has reached the listeners. Needs `start()`."""
        while True:
            await self._events.join()
            if not self._busy and (self.waiting_count == 0 or self._paused):
                await asyncio.sleep(0)
                if not self._busy and self._events.empty():
                    return
            await asyncio.sleep(0.005)

    async def _dispatch_loop(self) -> None:
        while True:
            while self._paused or not self.queue:
                self._wake.clear()
                await self._wake.wait()
            try:
                await self._run_next_batch()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The store failed (disk full, …): keep the bot alive, try again shortly.
                log.exception("Dispatcher error; retrying in 1 s")
                self._running = None
                self._busy = False
                await asyncio.sleep(1.0)

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
                raise  # a stop or a crash: the store keeps them `running` for recovery
            except Exception:
                # The store failed mid-way: what was not recorded goes back in the queue.
                unfinished = [e for e in batch if e.gen_id not in self._recorded]
                self.queue.restore(unfinished)
                with contextlib.suppress(Exception):
                    await self.store.requeue([e.gen_id for e in unfinished])
                raise
            self.batches_run += 1
        finally:
            self._running = None
            self._busy = False
            self._not_busy.set()

    async def _run_batch(self, batch: list[QueueEntry]) -> None:
        """Mark running, run on the worker, record each result (in that order)."""
        self._recorded = set()
        # Visible as running at once, so a cancel arriving now reaches it.
        running = self._running = _Running(batch, time.monotonic(), sum(e.cost for e in batch))
        # Durable first: `running` before the worker sees anything.
        started = {gen.id: gen for gen in await self.store.mark_running(running.ids())}
        for entry in batch:
            if entry.gen_id not in started:
                log.warning("#%d was not queued in the store any more; skipped", entry.gen_id)
                self._recorded.add(entry.gen_id)
        for gen in started.values():
            self._emit("on_started", gen)
        requests: list[GenerationRequest] = []
        runnable: list[QueueEntry] = []
        for entry in batch:
            if entry.gen_id not in started:
                continue
            try:
                request = entry.request
                if request.mode != "txt2img" and request.init_image is None:
                    request = await self.store.load_request(started[entry.gen_id])
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
        elapsed = time.monotonic() - running.started
        by_id = {result.job_id: result for result in results}
        ok_cost, clean = 0, True
        for entry in runnable:
            result = by_id.get(str(entry.gen_id))
            if result is None:
                result = GenerationResult(
                    str(entry.gen_id), error="The image worker returned no result for this job."
                )
            if result.ok:
                ok_cost += entry.cost
            else:
                clean = False
            await self._finish(entry, result)
        if clean:
            self._measure(ok_cost, elapsed)

    async def _call_worker(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        try:
            results = await self.worker.run(requests, on_progress=self._on_progress)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("The worker failed on jobs %s", [r.job_id for r in requests])
            message = f"The image worker failed unexpectedly ({type(error).__name__}: {error})."
            return [GenerationResult(job_id=r.job_id, error=message) for r in requests]
        if not isinstance(results, list):
            log.error("The worker returned %r instead of a list of results", type(results))
            return []
        return results

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
            self._emit("on_progress", gen_id)

    async def _finish(self, entry: QueueEntry, result: GenerationResult) -> None:
        """Record the outcome, then tell the listeners (never the other way round)."""
        try:
            gen = await self.store.save_result(entry.gen_id, result)
        except StoreError as error:
            log.error("Could not record the result of #%d: %s", entry.gen_id, error)
            return
        self._recorded.add(entry.gen_id)
        if gen is not None:
            self._emit("on_finished", gen, result)

    def _measure(self, cost: int, seconds: float) -> None:
        """Fold one batch's measured cost per second into the moving average."""
        if cost <= 0 or seconds <= 0:
            return
        alpha = self.eta_smoothing
        self.cost_per_second = (1 - alpha) * self.cost_per_second + alpha * cost / seconds


__all__ = [
    "MAX_RUNS",
    "FairQueue",
    "JobInfo",
    "QueueEntry",
    "QueueRefused",
    "Scheduler",
    "SchedulerListener",
    "WorkerLike",
]
