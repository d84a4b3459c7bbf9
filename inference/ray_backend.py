"""Workers on the GPUs of a Ray cluster: one Ray actor per GPU, each with its own model.

    pool = RayPool(config, address="auto")   # or "ray://head:10001"
    await pool.start()     # connects, starts one actor per GPU, returns when the first is ready

The actor runs the same engine and answers with the same messages as the worker process
(`Ready`, `Progress`, `BatchDone`, …; images are PNG bytes). The pool looks at the cluster's
resources every `poll_seconds`: a GPU that joined gets an actor, an idle actor that stopped
answering is replaced. An actor that dies mid-batch (killed, or its node lost) raises
`WorkerCrashed`, so the scheduler retries the batch elsewhere; the pool replaces the actor.

Ray is optional (`pip install -e ".[ray]"`); nothing here imports it until `start()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from .backend import Pool, WorkerState
from .engine import EngineConfig, ModelLoadError
from .request import GenerationRequest, GenerationResult
from .worker import (
    BatchDone,
    BatchFailed,
    CancelJob,
    FromWorker,
    JobProgress,
    LoadFailed,
    Progress,
    Ready,
    RunBatch,
    Screened,
    ScreenFailed,
    ScreenImages,
    WorkerCrashed,
    deliver_progress,
    execute,
    load_engine,
    screen,
)

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger(__name__)

RAY_MISSING = (
    'workers.backend is "ray" but Ray is not installed here; install it with '
    'pip install -e ".[ray]" (on this machine and on every GPU machine).'
)


class EaselActor:
    """The Easel worker inside a Ray actor (threaded, so `progress` and `cancel` are served
    while `run` works)."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.engine: Engine | None = None
        self._cancelled: set[str] = set()
        self._progress: Progress | None = None
        self._lock = threading.Lock()

    def load(self) -> Ready | LoadFailed:
        import ray

        engine, message = load_engine(self.config)
        self.engine = engine
        if isinstance(message, Ready):
            gpus = [str(g) for g in ray.get_gpu_ids()]
            device = str(message.info.get("device", ""))
            host = socket.gethostname()
            message.info["where"] = f"{host} GPU {','.join(gpus)}" if gpus else f"{host} {device}"
            message.info["pid"] = os.getpid()
        return message

    def run(self, run: RunBatch) -> BatchDone | BatchFailed:
        if self.engine is None:
            return BatchFailed(run.batch_id, "The worker has no model loaded.")
        return execute(self.engine, run, self._send, self._cancelled)

    def _send(self, message: FromWorker) -> None:
        if not isinstance(message, Progress):
            return
        with self._lock:  # keep the newest step and every preview not yet collected
            previous = self._progress
            previews = {**previous.previews, **message.previews} if previous else message.previews
            self._progress = Progress(message.batch_id, message.step, message.total, previews)

    def progress(self) -> Progress | None:
        """The newest progress since the last call (None if there was none)."""
        with self._lock:
            message, self._progress = self._progress, None
        return message

    def cancel(self, message: CancelJob) -> None:
        self._cancelled.add(message.job_id)

    def screen(self, message: ScreenImages) -> Screened | ScreenFailed:
        if self.engine is None:
            return ScreenFailed(message.screen_id, "The worker has no model loaded.")
        return screen(self.engine, message)

    def ping(self) -> int:
        return os.getpid()


def _crash_types(*more: type[Exception]) -> tuple[type[Exception], ...]:
    import ray.exceptions

    # A dead actor, a lost node or object: the batch goes elsewhere. Our actor methods never
    # raise (errors come back as BatchFailed), so any Ray error means the worker is gone.
    return (ray.exceptions.RayError, *more)


class RaySlot:
    """One actor as a pool member."""

    def __init__(self, name: str, actor: Any, *, poll: float = 0.2):
        self._name = name
        self.actor = actor
        self.poll = poll
        self.info: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._cancelled: set[str] = set()

    @property
    def name(self) -> str:
        return self._name

    async def load(self) -> Ready | LoadFailed:
        try:
            message: Ready | LoadFailed = await self.actor.load.remote()
        except _crash_types() as error:
            raise WorkerCrashed(f"The Ray actor died while loading: {error}") from error
        return message

    async def run(
        self, batch: list[GenerationRequest], on_progress: JobProgress | None = None
    ) -> list[GenerationResult]:
        job_ids = [r.job_id for r in batch]
        cancelled_now = [j for j in job_ids if j in self._cancelled]
        if len(cancelled_now) == len(batch):
            self._cancelled.difference_update(job_ids)
            return [GenerationResult(job_id=j, cancelled=True) for j in job_ids]
        try:
            reply = await self._run(RunBatch(next(self._ids), batch), cancelled_now, on_progress)
        except _crash_types() as error:
            self._cancelled.difference_update(job_ids)
            raise WorkerCrashed(f"The Ray actor {self.name} died: {error}") from error
        if isinstance(reply, BatchFailed):
            results = [GenerationResult(job_id=j, error=reply.error) for j in job_ids]
        else:
            results = reply.results
        for result in results:
            if result.job_id in self._cancelled:
                result.cancelled = True
        self._cancelled.difference_update(job_ids)
        return results

    async def _run(
        self, run: RunBatch, cancelled_now: list[str], on_progress: JobProgress | None
    ) -> BatchDone | BatchFailed:
        future = asyncio.wrap_future(self.actor.run.remote(run).future())
        for job_id in cancelled_now:
            self.actor.cancel.remote(CancelJob(job_id))
        job_ids = [r.job_id for r in run.batch]
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=self.poll)
                message: Progress | None = await self.actor.progress.remote()
                if message is not None and message.batch_id == run.batch_id and on_progress:
                    deliver_progress(message, job_ids, on_progress)
                if done:
                    reply: BatchDone | BatchFailed = future.result()
                    return reply
        finally:
            if not future.done():
                future.cancel()

    async def screen(self, pngs: list[bytes]) -> list[bool]:
        try:
            reply: Screened | ScreenFailed = await self.actor.screen.remote(
                ScreenImages(next(self._ids), list(pngs))
            )
        except _crash_types() as error:
            raise WorkerCrashed(f"The Ray actor {self.name} died: {error}") from error
        if isinstance(reply, ScreenFailed):
            raise RuntimeError(reply.error)
        return list(reply.flags)

    def cancel(self, job_id: str) -> None:
        self._cancelled.add(job_id)
        with contextlib.suppress(Exception):  # a dead actor: the crash path answers
            self.actor.cancel.remote(CancelJob(job_id))

    async def alive(self, within: float = 10.0) -> bool:
        try:
            await asyncio.wait_for(self.actor.ping.remote(), within)
        except _crash_types(TimeoutError):
            return False
        return True


class RayPool(Pool):
    """One `EaselActor` per unit of `resource` (a GPU) in the Ray cluster at `address`."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        address: str = "auto",
        resource: str = "GPU",
        poll_seconds: float = 5.0,
        start_timeout: float = 900.0,
        restart_delay: float = 30.0,
    ):
        super().__init__()
        self.config = config
        self.address = address
        self.resource = resource
        self.poll_seconds = poll_seconds
        self.start_timeout = start_timeout
        self.restart_delay = restart_delay
        self._names = (f"ray-{n}" for n in itertools.count(1))
        self._boots: dict[str, asyncio.Task[None]] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._connected_here = False
        self._stopping = False
        self._actor_class: Any = None

    async def __aenter__(self) -> RayPool:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        try:
            import ray
        except ImportError:
            raise ModelLoadError(RAY_MISSING) from None
        self._started = True
        self._stopping = False
        self._started_at = time.monotonic()
        if not ray.is_initialized():
            try:
                await asyncio.to_thread(
                    ray.init, address=self.address, namespace="easel", log_to_driver=False
                )
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise ModelLoadError(
                    f"Could not join the Ray cluster at {self.address!r}: {error}"
                ) from None
            self._connected_here = True
        self._actor_class = ray.remote(EaselActor)
        await self.look()
        self._watcher = asyncio.create_task(self._watch(), name="easel-ray-watch")
        try:
            await self.wait_first_ready(
                self.start_timeout,
                hint=f"Does the Ray cluster at {self.address!r} have a free {self.resource}?",
            )
        except BaseException:
            await self.stop()
            raise

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.look()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the cluster is unreachable for a moment
                log.warning("Could not look at the Ray cluster: %s", error)

    async def look(self) -> None:
        """Match the actors to the cluster: one per unit of the resource; replace dead ones."""
        import ray

        resources = await asyncio.to_thread(ray.cluster_resources)
        wanted = int(resources.get(self.resource, 0))
        statuses = self.statuses()
        for _ in range(wanted - len(statuses)):
            name = next(self._names)
            log.info("A %s joined the Ray cluster: starting worker %s", self.resource, name)
            self._spawn(name)
        surplus = len(statuses) - wanted
        for status in statuses:
            if surplus > 0 and status.state in (WorkerState.LOADING, WorkerState.DOWN):
                # Its GPU left the cluster (a lost node): stop waiting for it.
                log.info("Worker %s has no %s in the cluster any more", status.name, self.resource)
                self._drop(status.name)
                surplus -= 1
        for status in self.statuses():
            slot = self._slot(status.name)
            if status.state == WorkerState.IDLE and isinstance(slot, RaySlot):
                if not await slot.alive() and self._slot(status.name) is slot:
                    log.warning("Ray worker %s stopped answering; replacing it", status.name)
                    self._set(status.name, WorkerState.LOADING, detail="replacing a lost worker")
                    self._restart(status.name)

    def _new_actor(self) -> Any:
        # Threaded, so `progress` and `cancel` are answered while `run` works; never restarted
        # by Ray (the pool replaces it, and the scheduler retries its batch elsewhere).
        options: dict[str, Any] = {"max_concurrency": 4, "max_restarts": 0}
        if self.resource == "GPU":
            options["num_gpus"] = 1
        else:
            options["resources"] = {self.resource: 1}
        return self._actor_class.options(**options).remote(self.config)

    def _spawn(self, name: str) -> None:
        slot = RaySlot(name, self._new_actor())
        if self._slot(name) is None:
            self._add(slot)
        else:
            self._replace_slot(slot)
        old = self._boots.get(name)
        if old is not None and not old.done():
            old.cancel()
        self._boots[name] = asyncio.create_task(self._boot(slot), name=f"easel-{name}")

    async def _boot(self, slot: RaySlot) -> None:
        self._loading(slot.name, f"waiting for a {self.resource} and loading the model")
        try:
            reply = await slot.load()
        except WorkerCrashed as error:
            reply = LoadFailed(str(error))
        if self._slot(slot.name) is not slot:
            return
        if isinstance(reply, Ready):
            slot.info = reply.info
            self._ready(slot.name, where=str(reply.info.get("where", "")), info=reply.info)
            return
        log.error("Ray worker %s could not start: %s", slot.name, reply.message)
        self._kill(slot)
        self._down(slot.name, reply.message)
        await asyncio.sleep(self.restart_delay)
        if self._slot(slot.name) is slot and not self._stopping:
            self._spawn(slot.name)

    def _restart(self, name: str) -> None:
        slot = self._slot(name)
        if self._stopping or not isinstance(slot, RaySlot):
            return
        self._kill(slot)
        self._spawn(name)

    def _drop(self, name: str) -> None:
        slot = self._slot(name)
        boot = self._boots.pop(name, None)
        if boot is not None:
            boot.cancel()
        if isinstance(slot, RaySlot):
            self._kill(slot)
        self._remove(name)

    @staticmethod
    def _kill(slot: RaySlot) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.kill(slot.actor, no_restart=True)

    async def stop(self, *, grace: float = 10.0) -> None:
        """Kill the actors (their GPUs are freed) and leave the cluster if we joined it
        (at once: a running batch runs again at the next start, whatever `grace` says)."""
        self._stopping = True
        tasks = [t for t in (self._watcher, *self._boots.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._watcher = None
        self._boots.clear()
        for status in self.statuses():
            slot = self._slot(status.name)
            if isinstance(slot, RaySlot):
                self._kill(slot)
            self._remove(status.name)
        if self._connected_here:
            import ray

            await asyncio.to_thread(ray.shutdown)
            self._connected_here = False
