"""The workers as the queue sees them: a lone worker as a pool of one, and each worker's state
with the jobs it runs (for /queue and the moderators' log)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from inference.backend import Pool, WorkerState, WorkerStatus
from inference.request import GenerationRequest, GenerationResult
from inference.worker import READY, JobProgress, Readiness


@runtime_checkable
class WorkerLike(Protocol):
    """One worker that supervises itself, like `inference.worker.Worker` (its `run` restarts
    a crashed process and retries by itself)."""

    async def run(
        self, batch: list[GenerationRequest], on_progress: JobProgress | None = None
    ) -> list[GenerationResult]: ...

    def cancel(self, job_id: str) -> None: ...


class _LoneSlot:
    def __init__(self, worker: WorkerLike):
        self.worker = worker

    @property
    def name(self) -> str:
        return "worker"

    async def run(
        self, batch: list[GenerationRequest], on_progress: JobProgress | None = None
    ) -> list[GenerationResult]:
        return await self.worker.run(batch, on_progress)

    def cancel(self, job_id: str) -> None:
        self.worker.cancel(job_id)

    async def screen(self, pngs: list[bytes]) -> list[bool]:
        screen = getattr(self.worker, "screen", None)
        if screen is None:
            raise RuntimeError("This worker cannot screen images.")
        flags: list[bool] = await screen(pngs)
        return flags


class OneWorker(Pool):
    """A started `WorkerLike` as a backend of one member; its owner starts and stops it."""

    def __init__(self, worker: WorkerLike):
        super().__init__()
        self.worker = worker
        slot = _LoneSlot(worker)
        self._add(slot)
        self._waiting_for_load: asyncio.Task[None] | None = None
        if not self.readiness().ready:
            # A launched worker still loading: its slot is handed out once it is ready.
            with contextlib.suppress(RuntimeError):  # no running loop: taken as ready
                self._waiting_for_load = asyncio.get_running_loop().create_task(
                    self._when_loaded(slot.name), name="easel-lone-worker-load"
                )
                return
        self._ready(slot.name, info=self._worker_info())

    def _worker_info(self) -> dict[str, object]:
        info = dict(getattr(self.worker, "info", None) or {})  # what a started Worker reported
        info.setdefault("native_size", getattr(self.worker, "native_size", 512))
        return info

    async def _when_loaded(self, name: str) -> None:
        wait_ready = getattr(self.worker, "wait_ready", None)
        try:
            if wait_ready is not None:
                await wait_ready()
        except Exception as error:
            self._down(name, str(error))
            return
        self._ready(name, info=self._worker_info())

    @property
    def native_size(self) -> int:
        return int(getattr(self.worker, "native_size", 512))

    @property
    def started(self) -> bool:
        return bool(getattr(self.worker, "alive", True))

    def readiness(self) -> Readiness:
        """The worker's own word (a launched `Worker` may still be loading)."""
        readiness = getattr(self.worker, "readiness", None)
        said = readiness() if callable(readiness) else READY
        return said if isinstance(said, Readiness) else READY

    async def start(self) -> None:
        start = getattr(self.worker, "start", None)
        if start is not None and not self.started:
            await start()
            self._ready("worker", info=self._worker_info())

    async def stop(self, *, grace: float = 10.0) -> None:
        return None  # its owner stops it

    def _restart(self, name: str) -> None:
        self._ready(name)  # it restarts its own process


@dataclass(frozen=True)
class WorkerInfo:
    """One worker and the jobs it runs now."""

    status: WorkerStatus
    gen_ids: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return self.status.name

    @property
    def state(self) -> WorkerState:
        return self.status.state
