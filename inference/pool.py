"""A pool of worker processes on this machine: one per device, each with its own model.

    pool = LocalPool(config, ["cuda:0", "cuda:1"])   # or ["auto"], or ["all"]
    await pool.start()          # returns when the first worker is ready; the rest load on
    slot = await pool.acquire()
    results = await slot.run(batch)   # WorkerCrashed if the process died
    pool.release(slot)
    await pool.stop()

A crashed worker is restarted in the background; a restart that fails to load is tried again
every `restart_delay` seconds, and the worker shows as down meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence

from .backend import Pool, Slot
from .engine import EngineConfig, ModelLoadError, valid_device
from .request import GenerationRequest, GenerationResult
from .worker import JobProgress, Readiness, Worker, WorkerCrashed

log = logging.getLogger(__name__)


class LocalSlot:
    """One worker process as a pool member."""

    def __init__(self, name: str, worker: Worker):
        self._name = name
        self.worker = worker

    @property
    def name(self) -> str:
        return self._name

    async def run(
        self, batch: list[GenerationRequest], on_progress: JobProgress | None = None
    ) -> list[GenerationResult]:
        try:
            return await self.worker.run_once(batch, on_progress)
        except WorkerCrashed:
            self.worker.forget_cancels([r.job_id for r in batch])
            raise

    def cancel(self, job_id: str) -> None:
        self.worker.cancel(job_id)

    async def screen(self, pngs: list[bytes]) -> list[bool]:
        return await self.worker.screen(pngs)


def expand_devices(devices: Sequence[str]) -> list[str]:
    """`all` = every visible GPU (one worker on the best device if there is none)."""
    if list(devices) != ["all"]:
        for device in devices:
            if not valid_device(device):
                raise ModelLoadError(f"Unknown device {device!r} in workers.devices.")
        return list(devices) or ["auto"]
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        log.warning("workers.devices is all but torch sees no CUDA GPU: one worker on auto")
        return ["auto"]
    return [f"cuda:{index}" for index in range(count)]


def worker_names(devices: Sequence[str]) -> list[str]:
    """A stable name per worker: its device, numbered when a device is listed twice."""
    counts = collections.Counter(devices)
    seen: collections.Counter[str] = collections.Counter()
    names = []
    for device in devices:
        seen[device] += 1
        names.append(device if counts[device] == 1 else f"{device}#{seen[device]}")
    return names


class LocalPool(Pool):
    """One `Worker` process per device, behind the shared pool bookkeeping."""

    def __init__(
        self,
        config: EngineConfig,
        devices: Sequence[str] = ("auto",),
        *,
        start_timeout: float = 600.0,
        restart_delay: float = 30.0,
        expected_load_seconds: float | None = None,
    ):
        super().__init__()
        self.expected_load_seconds = expected_load_seconds
        self.config = config
        self.devices = expand_devices(devices)
        self.start_timeout = start_timeout
        self.restart_delay = restart_delay
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        for name, device in zip(worker_names(self.devices), self.devices, strict=True):
            worker = Worker(
                dataclasses.replace(config, device=device),
                start_timeout=start_timeout,
                expected_load_seconds=expected_load_seconds,
            )
            self._add(LocalSlot(name, worker))

    @property
    def slots(self) -> list[LocalSlot]:
        return [s for s in (self._slot(n) for n in self._names()) if isinstance(s, LocalSlot)]

    def _names(self) -> list[str]:
        return [status.name for status in self.statuses()]

    async def __aenter__(self) -> LocalPool:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def native_size(self) -> int:
        """The first ready worker's; while none is, read from the model's config files."""
        if self.info or not self.slots:
            return super().native_size
        return self.slots[0].worker.native_size

    def _member_readiness(self, slot: Slot) -> Readiness:
        if isinstance(slot, LocalSlot) and slot.worker.pid is not None:
            return slot.worker.readiness()
        return self._guess_readiness()

    async def start(self) -> None:
        """Start every worker at once; return when the first has loaded its model."""
        self._started = True
        self._started_at = time.monotonic()
        self._stopping = False
        for name in self._names():
            self._launch(name, restart=False)
        try:
            await self.wait_first_ready(self.start_timeout + 5)
        except BaseException:
            await self.stop()
            raise

    def _launch(self, name: str, *, restart: bool) -> None:
        old = self._tasks.get(name)
        if old is not None and not old.done():
            return  # already starting
        self._tasks[name] = asyncio.create_task(self._boot(name, restart), name=f"easel-{name}")

    async def _boot(self, name: str, restart: bool) -> None:
        slot = self._slot(name)
        assert isinstance(slot, LocalSlot)
        worker = slot.worker
        tries = 0
        while not self.is_stopping():
            if not restart or tries:  # a first restart keeps saying why it restarts
                self._loading(name, "restarting" if restart else "loading the model")
            tries += 1
            try:
                if restart:
                    await worker.restart()
                else:
                    await worker.start()
            except (ModelLoadError, WorkerCrashed) as error:
                if self.is_stopping():  # stop() cut the start short
                    return
                if len(self._names()) > 1 or restart:  # a lone worker's error is the bot's own
                    log.error("Worker %s could not start: %s", name, error)
                self._down(name, str(error))
                if not restart:
                    return  # a device that fails at start-up is a setting to fix
                await asyncio.sleep(self.restart_delay)
                continue
            device = str(worker.info.get("device", ""))
            # "auto (cuda)" says something; "cpu#2 (cpu)" does not.
            where = "" if name.split("#")[0] == device else device
            self._ready(name, where=where, info=worker.info)
            return

    def is_stopping(self) -> bool:
        return self._stopping

    def _alive(self, slot: Slot) -> bool:
        return not isinstance(slot, LocalSlot) or slot.worker.alive

    def _restart(self, name: str) -> None:
        if not self._stopping:
            self._launch(name, restart=True)

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop every worker (loading ones too)."""
        self._stopping = True
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.gather(
            *(slot.worker.stop(grace=grace) for slot in self.slots), return_exceptions=True
        )
