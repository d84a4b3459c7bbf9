"""The workers as the queue sees them: a lone worker as a pool of one, and each worker's state
with the jobs it runs (for /queue and the moderators' log)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from inference.backend import Pool, WorkerState, WorkerStatus
from inference.request import GenerationRequest, GenerationResult
from inference.worker import JobProgress


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
        info = dict(getattr(worker, "info", None) or {})  # what a started Worker reported
        info.setdefault("native_size", getattr(worker, "native_size", 512))
        self._ready(slot.name, info=info)

    @property
    def native_size(self) -> int:
        return int(getattr(self.worker, "native_size", 512))

    @property
    def started(self) -> bool:
        return bool(getattr(self.worker, "alive", True))

    async def start(self) -> None:
        start = getattr(self.worker, "start", None)
        if start is not None and not self.started:
            await start()

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
