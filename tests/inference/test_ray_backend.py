"""Workers as Ray actors, on a local Ray cluster started here (a custom resource stands in for
a GPU, so several actors live on a CPU machine). One cluster for the module: Ray is heavy on
a small machine. A killed actor's batch is retried and every job ends once; a node that joins
while the bot runs gets an actor, and the actor gets work."""

from __future__ import annotations

import asyncio
import sqlite3
import sys

import pytest
import pytest_asyncio

from bot.db import Database, Repositories
from bot.domain import JobOrigin
from bot.queue import QuietListener, Scheduler
from inference.backend import WorkerState
from inference.engine import EngineConfig, ModelLoadError
from inference.request import GenerationRequest
from tests.bot.queue.exactly_once import FINALS_DDL, finals

try:
    import ray
    from ray.cluster_utils import Cluster
except ImportError:  # the optional extra: pip install -e ".[ray]"
    ray = None

from inference.ray_backend import RAY_MISSING, RayPool, RaySlot

needs_ray = pytest.mark.skipif(ray is None, reason='Ray is not installed (pip install -e ".[ray]")')
RESOURCE = "easel_gpu"


async def test_without_ray_start_says_how_to_install_it(monkeypatch):
    """backend = "ray" without Ray installed: one line that says what to install."""
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ModelLoadError) as error:
        await RayPool(EngineConfig()).start()
    assert str(error.value) == RAY_MISSING


@pytest.fixture(scope="module")
def cluster():
    """A head node with two stand-in GPUs; tests may add nodes."""
    if ray is None:
        pytest.skip('Ray is not installed (pip install -e ".[ray]")')
    made = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {RESOURCE: 2}, "include_dashboard": False},
    )
    ray.init(address=made.address, include_dashboard=False, log_to_driver=False)
    yield made
    ray.shutdown()
    made.shutdown()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(cluster, tiny_model_dir):
    config = EngineConfig(model=tiny_model_dir, device="cpu", extra={"step_delay": 0.05})
    running = RayPool(
        config, address=cluster.address, resource=RESOURCE, poll_seconds=0.5, restart_delay=1
    )
    await asyncio.wait_for(running.start(), 300)
    yield running
    await running.stop()


async def up(pool: RayPool, count: int, timeout: float = 300) -> None:
    for _ in range(int(timeout / 0.1)):
        statuses = pool.statuses()
        if len(statuses) >= count and all(s.state == WorkerState.IDLE for s in statuses):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"workers not up: {pool.statuses()}")


@pytest_asyncio.fixture(loop_scope="module")
async def scheduler(pool, tmp_path):
    db = tmp_path / "easel.sqlite3"
    async with Database.open(db) as database:
        with sqlite3.connect(db) as conn:
            conn.executescript(FINALS_DDL)
        made = Scheduler(Repositories.on(database), pool, max_batch=1)
        made.db_path = db
        yield made
        await made.stop()


def fox(i: int, steps: int = 8) -> GenerationRequest:
    return GenerationRequest(prompt=f"a fox, take {i}", width=64, height=64, steps=steps, seed=i)


class Watch(QuietListener):
    """Which worker each job ran on; optionally kills the actor of the first job seen running."""

    def __init__(self, scheduler: Scheduler, pool: RayPool, *, kill: bool = False):
        self.scheduler, self.pool, self.kill = scheduler, pool, kill
        self.ran_on: dict[int, str] = {}
        self.killed: tuple[int, str] | None = None

    async def on_progress(self, gen_id, step, total):
        worker = self.scheduler.worker_of(gen_id)
        if worker is None:
            return
        self.ran_on[gen_id] = worker.name
        if self.kill and self.killed is None and step >= 2:
            slot = self.pool._slot(worker.name)
            assert isinstance(slot, RaySlot)
            self.killed = (gen_id, worker.name)
            ray.kill(slot.actor, no_restart=True)


@needs_ray
@pytest.mark.asyncio(loop_scope="module")
async def test_a_killed_actor_s_batch_is_retried_and_every_job_ends_once(pool, scheduler):
    """ray.kill of an actor mid-job: the batch runs again on another actor, the actor is
    replaced, every job reached a final status once, and the images came back as PNGs."""
    await up(pool, 2)
    watch = Watch(scheduler, pool, kill=True)
    scheduler.add_listener(watch)
    accepted = [(await scheduler.submit(fox(i), JobOrigin(user_id=i % 3))).id for i in range(4)]
    await scheduler.start()
    await asyncio.wait_for(scheduler.idle(), 300)
    assert watch.killed is not None
    killed_id, killed_on = watch.killed
    ended = finals(scheduler.db_path)
    for gen_id in accepted:
        gen = await scheduler.generations.get(gen_id)
        assert gen.status == "done", (gen_id, gen.status, gen.error)
        assert ended[gen_id] == 1, (gen_id, ended)
        assert gen.images[0].path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (await scheduler.generations.get(killed_id)).attempts == 2
    await up(pool, 2)  # the killed actor was replaced under its name
    assert killed_on in {s.name for s in pool.statuses()} and len(pool.statuses()) == 2


@needs_ray
@pytest.mark.asyncio(loop_scope="module")
async def test_a_gpu_that_joins_gets_an_actor_and_work(cluster, pool, scheduler):
    """A node with one more stand-in GPU joins while the bot runs: a third actor starts, and
    with three jobs waiting each actor runs one."""
    await up(pool, 2)
    node = cluster.add_node(num_cpus=1, resources={RESOURCE: 1})
    try:
        await up(pool, 3)
        (joined,) = {s.name for s in pool.statuses()} - {"ray-1", "ray-2"}
        slot = pool._slot(joined)
        assert isinstance(slot, RaySlot) and slot.info.get("where")
        watch = Watch(scheduler, pool)
        scheduler.add_listener(watch)
        jobs = [
            (await scheduler.submit(fox(i, steps=16), JobOrigin(user_id=i))).id for i in (1, 2, 3)
        ]
        await scheduler.start()
        await asyncio.wait_for(scheduler.idle(), 300)
        assert sorted(watch.ran_on.values()) == sorted(s.name for s in pool.statuses())
        for gen_id in jobs:
            assert (await scheduler.generations.get(gen_id)).status == "done"
    finally:
        await scheduler.stop()
        cluster.remove_node(node)
    # Its GPU left: the pool stops counting on it (the actor died with the node).
    for _ in range(600):
        if len(pool.statuses()) == 2 and joined not in {s.name for s in pool.statuses()}:
            break
        await asyncio.sleep(0.1)
    assert joined not in {s.name for s in pool.statuses()}
