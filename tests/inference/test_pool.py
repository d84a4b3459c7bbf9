"""The local worker pool: device lists, the free-worker bookkeeping, and start-up that waits
for the first worker only (a bad device is down, not fatal)."""

import asyncio
import dataclasses

import pytest

from inference.backend import Pool, WorkerState
from inference.engine import EngineConfig, ModelLoadError, resolve_device
from inference.pool import LocalPool, expand_devices, worker_names
from inference.request import GenerationRequest


def test_worker_names_number_repeated_devices():
    """Each worker has a stable name: its device, numbered when listed twice."""
    assert worker_names(["cuda:0", "cuda:1"]) == ["cuda:0", "cuda:1"]
    assert worker_names(["cpu", "cpu", "cuda:0"]) == ["cpu#1", "cpu#2", "cuda:0"]


def test_device_lists():
    """Devices are checked; `all` on a machine without GPUs is one worker on the best device."""
    assert expand_devices(["cpu", "cuda:3"]) == ["cpu", "cuda:3"]
    assert expand_devices(["all"]) == ["auto"]  # this machine has no CUDA GPU
    with pytest.raises(ModelLoadError, match="gpu0"):
        expand_devices(["gpu0"])
    with pytest.raises(ModelLoadError, match="cuda:2 asked for"):
        resolve_device("cuda:2")
    assert resolve_device("cpu") == "cpu"


class _Slot:
    def __init__(self, name):
        self.name = name

    async def run(self, batch, on_progress=None):
        return []

    def cancel(self, job_id):
        pass


class _Pool(Pool):
    def __init__(self, n):
        super().__init__()
        for i in range(n):
            self._add(_Slot(f"w{i}"))
            self._ready(f"w{i}")
        self.restarted = []

    def _restart(self, name):
        self.restarted.append(name)


async def test_a_retry_is_served_before_new_batches():
    """When a worker frees up, a waiting retry gets it before a waiting new batch."""
    pool = _Pool(1)
    slot = await pool.acquire()
    new = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)
    retry = asyncio.ensure_future(pool.acquire(retry=True))
    await asyncio.sleep(0)
    pool.release(slot)
    assert await retry is slot and not new.done()
    pool.release(slot, crashed=True)
    assert pool.restarted == ["w0"] and pool.statuses()[0].state == WorkerState.LOADING
    pool._ready("w0")
    assert await new is slot


async def test_a_waiter_that_gives_up_does_not_keep_the_worker():
    """A cancelled acquire leaves the worker free for the next one."""
    pool = _Pool(1)
    slot = await pool.acquire()
    gave_up = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)
    gave_up.cancel()
    pool.release(slot)
    assert await asyncio.wait_for(pool.acquire(), 1) is slot


def request(job_id: str) -> GenerationRequest:
    return GenerationRequest(prompt="a fox", seed=1, steps=2, width=64, height=64, job_id=job_id)


@pytest.mark.asyncio(loop_scope="function")
async def test_start_waits_for_the_first_worker_and_a_bad_device_is_down(tiny_model_dir):
    """Start-up returns once one worker is ready while another still loads; a device that
    cannot load is shown down with its reason, and the pool serves work meanwhile."""
    config = EngineConfig(model=tiny_model_dir, device="cpu")
    pool = LocalPool(config, ["cpu", "cpu", "cuda:5"], restart_delay=0.1)
    slow = pool.slots[1].worker
    slow.config = dataclasses.replace(slow.config, extra={"load_delay": 600})
    seen = []
    pool.subscribe(lambda status: seen.append((status.name, status.state)))
    try:
        await asyncio.wait_for(pool.start(), 120)
        states = {s.name: s.state for s in pool.statuses()}
        assert states["cpu#1"] == WorkerState.IDLE and states["cpu#2"] == WorkerState.LOADING
        for _ in range(600):
            down = {s.name: s for s in pool.statuses()}["cuda:5"]
            if down.state == WorkerState.DOWN:
                break
            await asyncio.sleep(0.1)
        assert down.state == WorkerState.DOWN and "no CUDA GPU" in down.detail
        assert pool.native_size == 64
        slot = await pool.acquire()
        assert slot.name == "cpu#1"
        (result,) = await slot.run([request("a")])
        pool.release(slot)
        assert result.ok and result.images[0].png.startswith(b"\x89PNG")
        assert ("cpu#1", WorkerState.IDLE) in seen and ("cuda:5", WorkerState.DOWN) in seen
    finally:
        await pool.stop()
    assert not any(slot.worker.alive for slot in pool.slots)


@pytest.mark.asyncio(loop_scope="function")
async def test_start_fails_clearly_when_no_worker_can_load():
    """Every device bad: start-up stops with the reason."""
    pool = LocalPool(EngineConfig(model="/no/such/model", device="cpu"), ["cpu"])
    with pytest.raises(ModelLoadError):
        await asyncio.wait_for(pool.start(), 120)
