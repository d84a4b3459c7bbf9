"""Many workers behind one interface: their states, the protocols the scheduler uses, and the
bookkeeping (who is free, who waits for whom) that the local pool and the Ray backend share.

The scheduler takes a free worker (`acquire`), hands it one batch (`Slot.run`, one attempt)
and gives it back (`release`); a worker that crashed is given back with `crashed=True` and the
backend restarts it while the scheduler retries the batch on any free worker. A retry waits
ahead of new batches.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol, runtime_checkable

from .engine import ModelLoadError
from .request import GenerationRequest, GenerationResult
from .worker import FIRST_LOAD_GUESS_SECONDS, READY, JobProgress, Readiness, WorkerCrashed

log = logging.getLogger(__name__)


class WorkerState(StrEnum):
    LOADING = "loading"  # starting, loading the model, or waiting for a GPU to be free
    IDLE = "idle"
    RUNNING = "running"
    DOWN = "down"  # failed to start or died; `detail` says why


UP = (WorkerState.IDLE, WorkerState.RUNNING)


@dataclass(frozen=True)
class WorkerStatus:
    """One worker as /queue and the moderators' log show it."""

    name: str  # stable: "cuda:1", "cpu#2", "ray-3"
    state: WorkerState
    where: str = ""  # what it runs on, once known: "cuda:1", "gpu-box-2 GPU 0"
    detail: str = ""  # why it is down or still loading

    @property
    def label(self) -> str:
        if self.where and self.where != self.name:
            return f"{self.name} ({self.where})"
        return self.name


@runtime_checkable
class Slot(Protocol):
    """One worker: a local process or a Ray actor."""

    @property
    def name(self) -> str: ...

    async def run(
        self, batch: list[GenerationRequest], on_progress: JobProgress | None = None
    ) -> list[GenerationResult]:
        """One attempt; raises `inference.worker.WorkerCrashed` if the worker died."""
        ...

    def cancel(self, job_id: str) -> None:
        """Stop a job of the running batch between steps (its result says cancelled)."""

    async def screen(self, pngs: list[bytes]) -> list[bool]:
        """The safety checker's flag for each image; `WorkerCrashed` if the worker died."""
        ...


@runtime_checkable
class WorkerBackend(Protocol):
    """What the scheduler needs of a set of workers."""

    @property
    def started(self) -> bool:
        """`start()` was called (the workers may still be loading)."""
        ...

    async def start(self) -> None:
        """Start every worker; return once the first one is ready. Call it once."""

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop every worker; a running batch stops at its next step, and a worker still
        busy after `grace` seconds is killed (its jobs run again at the next start)."""

    async def acquire(self, *, retry: bool = False) -> Slot:
        """Wait for a free worker and reserve it; `retry=True` goes ahead of new batches."""
        ...

    def reserve(self, *, retry: bool = False) -> asyncio.Future[Slot]:
        """Take a place in the line for a worker now (the future is done at once if one is
        free); hand it to `give_up` to leave the line."""
        ...

    def give_up(self, reserved: asyncio.Future[Slot]) -> None:
        """Leave the line; a worker already handed over is given back."""

    def release(self, slot: Slot, *, crashed: bool = False) -> None:
        """Give the worker back; a crashed one is restarted (or replaced)."""

    def statuses(self) -> list[WorkerStatus]: ...

    def readiness(self) -> Readiness:
        """Ready once any worker is up; before that, how far loading has got."""
        ...

    async def screen(self, pngs: list[bytes]) -> list[bool]:
        """Screen images (an upload) with the checker of the first free worker, ahead of new
        batches."""
        ...

    def subscribe(self, callback: Callable[[WorkerStatus], None]) -> None:
        """Call `callback` with a worker's new status whenever its state changes."""

    @property
    def native_size(self) -> int: ...

    @property
    def info(self) -> dict[str, object]:
        """What the first worker reported when it was ready (native size, device, lab, …)."""
        ...


@dataclass
class _Member:
    slot: Slot
    status: WorkerStatus


class Pool:
    """The shared bookkeeping: members, their states, and the waiters for a free one.

    A subclass adds members with `_add`, reports `_ready` / `_down` / `_loading`, and restarts
    a crashed member in `_restart` (called from `release`).
    """

    def __init__(self) -> None:
        self._members: dict[str, _Member] = {}
        self._waiting: collections.deque[asyncio.Future[Slot]] = collections.deque()
        self._retrying: collections.deque[asyncio.Future[Slot]] = collections.deque()
        self._subscribers: list[Callable[[WorkerStatus], None]] = []
        self._first_ready = asyncio.Event()
        self.info: dict[str, object] = {}  # the first ready worker's info (native size, …)
        self._started = False
        # How long loading took last time (the bot remembers it), for "about N s".
        self.expected_load_seconds: float | None = None
        self._started_at = time.monotonic()

    @property
    def started(self) -> bool:
        return self._started

    # -- what the scheduler uses -----------------------------------------------------------

    @property
    def native_size(self) -> int:
        value = self.info.get("native_size", 512)
        return int(value) if isinstance(value, int | float | str) else 512

    def statuses(self) -> list[WorkerStatus]:
        return [member.status for member in self._members.values()]

    def readiness(self) -> Readiness:
        """Ready once any worker is up; before that, the loading worker that will be ready
        first (a first download, whose end is unknown, is reported as such)."""
        members = list(self._members.values())
        if any(member.status.state in UP for member in members):
            return READY
        if members and all(m.status.state == WorkerState.DOWN for m in members):
            return Readiness(False, "down")
        readings = [
            self._member_readiness(m.slot) for m in members if m.status.state != WorkerState.DOWN
        ]
        downloading = [r for r in readings if r.phase == "downloading"]
        if downloading:
            return max(downloading, key=lambda r: r.downloaded_bytes)
        known = [r for r in readings if r.seconds_left is not None]
        if known:
            return min(known, key=lambda r: r.seconds_left or 0.0)
        return self._guess_readiness()

    def _member_readiness(self, slot: Slot) -> Readiness:
        """A loading member's own report, where its kind of worker gives one."""
        return self._guess_readiness()

    def _guess_readiness(self) -> Readiness:
        expected = self.expected_load_seconds or FIRST_LOAD_GUESS_SECONDS
        left = max(5.0, expected - (time.monotonic() - self._started_at))
        return Readiness(False, "loading", seconds_left=left)

    def subscribe(self, callback: Callable[[WorkerStatus], None]) -> None:
        self._subscribers.append(callback)

    async def screen(self, pngs: list[bytes]) -> list[bool]:
        slot = await self.acquire(retry=True)  # a member waits for this, not for the queue
        try:
            flags = await slot.screen(pngs)
        except WorkerCrashed:
            self.release(slot, crashed=True)
            raise
        except BaseException:
            self.release(slot)
            raise
        self.release(slot)
        return flags

    async def acquire(self, *, retry: bool = False) -> Slot:
        reserved = self.reserve(retry=retry)
        try:
            return await reserved
        except asyncio.CancelledError:
            self.give_up(reserved)  # handed over just as the waiter gave up: give it back
            raise

    def reserve(self, *, retry: bool = False) -> asyncio.Future[Slot]:
        future: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        idle = self._idle()
        if idle is not None and (retry or not self._retrying):
            future.set_result(self._take(idle))
        else:
            (self._retrying if retry else self._waiting).append(future)
        return future

    def give_up(self, reserved: asyncio.Future[Slot]) -> None:
        if reserved.done() and not reserved.cancelled():
            self.release(reserved.result())
        else:
            reserved.cancel()  # `_hand_over` skips it

    def release(self, slot: Slot, *, crashed: bool = False) -> None:
        member = self._members.get(slot.name)
        if member is None or member.slot is not slot:
            return  # replaced meanwhile
        if crashed:
            self._set(slot.name, WorkerState.LOADING, detail="it crashed")
            self._restart(slot.name)
        elif member.status.state == WorkerState.RUNNING:
            self._set(slot.name, WorkerState.IDLE)
            self._hand_over()

    async def wait_first_ready(self, within: float, hint: str = "") -> None:
        """Return when one worker is ready; raise `ModelLoadError` if all are down or none
        is ready within `within` seconds (`hint` says what to check)."""

        async def first() -> None:
            while not self._first_ready.is_set():
                if self._members and all(
                    m.status.state == WorkerState.DOWN for m in self._members.values()
                ):
                    reasons = {m.status.detail for m in self._members.values()}
                    raise ModelLoadError("; ".join(sorted(r for r in reasons if r)))
                await asyncio.sleep(0.05)

        try:
            await asyncio.wait_for(first(), within)
        except TimeoutError:
            message = f"No worker was ready within {within:.0f} s."
            raise ModelLoadError(f"{message} {hint}".strip()) from None

    # -- for subclasses --------------------------------------------------------------------

    def _add(self, slot: Slot, *, where: str = "") -> None:
        status = WorkerStatus(slot.name, WorkerState.LOADING, where)
        self._members[slot.name] = _Member(slot, status)
        self._notify(status)

    def _replace_slot(self, slot: Slot) -> None:
        """A new slot object (a new actor) under an existing member's name."""
        member = self._members[slot.name]
        member.slot = slot

    def _slot(self, name: str) -> Slot | None:
        member = self._members.get(name)
        return None if member is None else member.slot

    def _ready(self, name: str, *, where: str = "", info: dict[str, object] | None = None) -> None:
        if not self.info and info:
            self.info = dict(info)
        self._set(name, WorkerState.IDLE, where=where, detail="")
        self._first_ready.set()
        self._hand_over()

    def _down(self, name: str, detail: str) -> None:
        self._set(name, WorkerState.DOWN, detail=detail)

    def _loading(self, name: str, detail: str = "") -> None:
        self._set(name, WorkerState.LOADING, detail=detail)

    def _restart(self, name: str) -> None:
        raise NotImplementedError

    def _remove(self, name: str) -> None:
        self._members.pop(name, None)

    # -- internals -------------------------------------------------------------------------

    def _set(
        self, name: str, state: WorkerState, *, where: str | None = None, detail: str | None = None
    ) -> None:
        member = self._members.get(name)
        if member is None:
            return
        old = member.status
        new = replace(
            old,
            state=state,
            where=old.where if where is None or not where else where,
            detail=old.detail if detail is None else detail,
        )
        member.status = new
        if new != old:
            self._notify(new)

    def _notify(self, status: WorkerStatus) -> None:
        for callback in list(self._subscribers):
            try:
                callback(status)
            except Exception:
                log.exception("Worker status subscriber failed")

    def _alive(self, slot: Slot) -> bool:
        """Whether an idle worker still lives (a subclass that can tell says so)."""
        return True

    def _idle(self) -> _Member | None:
        for member in list(self._members.values()):
            if member.status.state != WorkerState.IDLE:
                continue
            if self._alive(member.slot):
                return member
            # Died between batches: restart it before anyone is handed a dead worker.
            self._set(member.slot.name, WorkerState.LOADING, detail="it had exited")
            self._restart(member.slot.name)
        return None

    def _take(self, member: _Member) -> Slot:
        self._set(member.slot.name, WorkerState.RUNNING)
        return member.slot

    def _hand_over(self) -> None:
        """Give idle workers to the waiters: retries first, then new batches."""
        while (member := self._idle()) is not None:
            queue = self._retrying if self._retrying else self._waiting
            while queue and queue[0].done():  # waiters that gave up
                queue.popleft()
            if not queue:
                if queue is self._retrying and self._waiting:
                    continue
                return
            queue.popleft().set_result(self._take(member))
