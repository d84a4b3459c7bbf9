"""Test doubles for the queue: requests, a worker that answers when told, a listener that
records every event."""

from __future__ import annotations

import asyncio

from bot.db import Repositories
from bot.queue import FairQueue, QueueEntry, QuietListener, Scheduler
from bot.services.admission import Admission
from bot.services.modlog import NoModLog
from bot.services.uploads import Screener
from bot.services.words import WordLists
from bot.settings import ModerationSettings, QueueSettings, Settings
from inference.backend import Pool
from inference.request import GeneratedImage, GenerationRequest, GenerationResult
from inference.worker import Readiness, WorkerCrashed


def req(prompt: str = "a fox", **overrides) -> GenerationRequest:
    values = dict(prompt=prompt, width=64, height=64, steps=4, seed=1)
    values.update(overrides)
    return GenerationRequest(**values)


def entry(gen_id: int, user_id: int, cost: int = 100, key: object = "k") -> QueueEntry:
    request = req(job_id=str(gen_id))
    return QueueEntry(gen_id, user_id, request, cost, (key,))


def ok_result(request: GenerationRequest, *, raw: bool = False) -> GenerationResult:
    """Made images; with `raw`, left unencoded as the engine leaves them for the scheduler
    (pixels and recipe, no PNG yet)."""
    seeds = request.image_seeds()
    images = [
        GeneratedImage(
            png=b"" if raw else b"\x89PNG" + request.job_id.encode() + bytes([i]),
            seed=seed,
            index=i,
            width=request.width,
            height=request.height,
            raw=bytes(request.width * request.height * 3) if raw else None,
            recipe={"seed": seed} if raw else None,
        )
        for i, seed in enumerate(seeds)
    ]
    return GenerationResult(job_id=request.job_id, images=images, timings={"inference": 0.01})


class FakeWorker:
    """Answers at once (or when released, with `manual=True`); honours cancel like the real one."""

    def __init__(self, *, manual: bool = False, on_batch=None, raw: bool = False):
        self.manual = manual
        self.raw = raw  # images left for the scheduler to encode
        self.on_batch = on_batch
        self.calls: list[list[GenerationRequest]] = []
        self.cancelled: set[str] = set()
        self.pending: tuple[list[GenerationRequest], asyncio.Future] | None = None
        self.fail_with: Exception | None = None
        self.drop_last = False
        self.arrived = asyncio.Event()
        # Loaded at once unless a test says otherwise (`loaded.clear()`, then `.set()`).
        self.loaded = asyncio.Event()
        self.loaded.set()
        self.load_seconds_left = 20.0

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
        if outcome == "crash":
            raise WorkerCrashed("The worker process died.")
        if self.fail_with is not None or outcome == "raise":
            raise self.fail_with or RuntimeError("CUDA error: an illegal memory access")
        results = []
        for request in batch:
            if request.job_id in self.cancelled or outcome == "cancel":
                results.append(GenerationResult(job_id=request.job_id, cancelled=True))
            elif outcome == "error":
                results.append(GenerationResult(job_id=request.job_id, error="The worker crashed."))
            else:
                results.append(ok_result(request, raw=self.raw))
        if self.drop_last or outcome == "partial":
            results = results[:-1]
        return results

    def cancel(self, job_id: str) -> None:
        self.cancelled.add(job_id)

    async def wait_ready(self) -> None:
        await self.loaded.wait()

    def readiness(self) -> Readiness:
        if self.loaded.is_set():
            return Readiness(True, "ready")
        return Readiness(False, "loading", seconds_left=self.load_seconds_left)

    async def wait_pending(self, *, not_job: str | None = None) -> list[GenerationRequest]:
        """Wait until a batch is held (one without job `not_job`); return it."""
        while self.pending is None or not_job in {r.job_id for r in self.pending[0]}:
            self.arrived.clear()
            await self.arrived.wait()
        return self.pending[0]

    def release(self, outcome: str = "ok") -> None:
        assert self.pending is not None
        self.pending[1].set_result(outcome)


class Recorder(QuietListener):
    """A listener that records every event, and checks the database recorded the change first."""

    def __init__(self, repos: Repositories | None = None):
        self.repos = repos
        self.events: list[tuple] = []

    async def on_queued(self, gen):
        self.events.append(("queued", gen.id))

    async def on_started(self, gen):
        self.events.append(("started", gen.id))

    async def on_progress(self, gen_id, step, total):
        self.events.append(("progress", gen_id, step, total))

    async def on_finished(self, gen, result):
        if self.repos is not None:
            stored = await self.repos.generations.get(gen.id)
            assert stored.status == gen.status and stored.is_final
        self.events.append(("finished", gen.id, gen.status))

    def of(self, kind: str) -> list:
        return [e for e in self.events if e[0] == kind]


def admission_for(
    repos: Repositories,
    scheduler: Scheduler,
    *,
    max_waiting_per_user: int = 0,
    daily_quota: int = 0,
    screener: Screener | None = None,
) -> Admission:
    """Admission in front of `scheduler`, with these caps (0 = none) and, for uploads, this
    safety checker."""
    settings = Settings(
        queue=QueueSettings(max_waiting_per_user=max_waiting_per_user, daily_quota=daily_quota)
    )
    words = WordLists(repos, ModerationSettings())
    return Admission(settings, repos, scheduler, words, NoModLog(), screener)


def drain(queue: FairQueue, max_size: int = 1) -> list[list[int]]:
    batches = []
    while queue:
        batches.append([e.gen_id for e in queue.pop_batch(max_size)])
    return batches


class FakeSlot(FakeWorker):
    """A fake worker with a name, as a pool member (`release("crash")` kills it)."""

    def __init__(self, name: str, **options):
        super().__init__(**options)
        self.name = name


class FakePool(Pool):
    """`n` fake workers behind the real pool bookkeeping; a crashed one is back at once
    (or when `revive(name)` is called, with `manual_restart=True`)."""

    def __init__(self, n: int = 2, *, manual_restart: bool = False, **options):
        super().__init__()
        self.manual_restart = manual_restart
        self.members = [FakeSlot(f"fake{i + 1}", **options) for i in range(n)]
        self.restarts: list[str] = []
        for slot in self.members:
            self._add(slot)
            self._ready(slot.name, info={"native_size": 64})

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def _restart(self, name: str) -> None:
        self.restarts.append(name)
        if not self.manual_restart:
            self._ready(name)

    def revive(self, name: str) -> None:
        self._ready(name)

    def slot(self, name: str) -> FakeSlot:
        return next(s for s in self.members if s.name == name)

    def pending(self) -> dict[str, list[GenerationRequest]]:
        """The batch each held worker has, by worker name."""
        return {s.name: s.pending[0] for s in self.members if s.pending is not None}

    async def wait_pending(self, count: int) -> dict[str, list[GenerationRequest]]:
        while len(self.pending()) < count:
            await asyncio.sleep(0.001)
        return self.pending()
