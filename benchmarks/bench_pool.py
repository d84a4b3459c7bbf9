"""Workers side by side: images per second through the scheduler with one worker process and
with two (tiny model, CPU), and the added latency per batch of a Ray actor over a local worker.

    OMP_NUM_THREADS=1 python benchmarks/bench_pool.py [--jobs 24] [--steps 8] [--size 64]
        [--rounds 3] [--batches 30] [--skip-ray]

Each worker loads its own copy of the model, so two workers on a machine with C cores share
those cores: on this 2-core machine two workers can at best double the rate, and the bot's
own process (SQLite, image files) and other users of the cores take their share.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.db import Database, Repositories
from bot.domain import JobOrigin
from bot.queue import Scheduler
from inference.backend import WorkerBackend
from inference.dummy import save_dummy_model
from inference.engine import EngineConfig
from inference.pool import LocalPool
from inference.request import GenerationRequest


def request(i: int, steps: int, size: int) -> GenerationRequest:
    return GenerationRequest(prompt=f"a fox {i}", width=size, height=size, steps=steps, seed=i)


async def images_per_second(
    pool: LocalPool, folder: Path, jobs: int, steps: int, size: int, batch: int
) -> float:
    """Queue `jobs` one-image jobs from four members; images per second from start to all
    recorded."""
    async with Database.open(folder / "easel.sqlite3") as db:
        scheduler = Scheduler(
            Repositories.on(db, images_dir=folder / "images"), pool, max_batch=batch
        )
        for i in range(jobs):
            await scheduler.submit(request(i, steps, size), JobOrigin(user_id=i % 4))
        started = time.perf_counter()
        await scheduler.start()
        await scheduler.idle()
        elapsed = time.perf_counter() - started
        await scheduler.stop()
    return jobs / elapsed


async def ready(pool: LocalPool) -> None:
    while any(s.state != "idle" for s in pool.statuses()):  # noqa: ASYNC110 - a poll is fine here
        await asyncio.sleep(0.1)


async def throughput(args: argparse.Namespace, model: str, tmp: Path) -> None:
    """One pool of one worker and one of two, measured in alternating rounds (so the load of
    a shared machine drifts over both alike)."""
    config = EngineConfig(model=model, device="cpu", preview_interval=1.0)  # bot default: on
    rates: dict[int, list[float]] = {1: [], 2: []}
    bot_cpu: dict[int, list[float]] = {1: [], 2: []}  # the bot process's CPU s per image
    spans: dict[int, list[float]] = {1: [], 2: []}  # a worker's own seconds per batch
    load = os.getloadavg()[0]
    async with LocalPool(config, ["cpu"]) as one, LocalPool(config, ["cpu", "cpu"]) as two:
        pools = {1: one, 2: two}
        for workers, pool in pools.items():
            await ready(pool)
            await images_per_second(pool, tmp / f"warm{workers}", 4, args.steps, args.size, 1)
        for r in range(args.rounds):
            for workers, pool in pools.items():
                folder = tmp / f"w{workers}r{r}"
                for slot in pool.slots:
                    slot.worker.timeline.clear()
                cpu = time.process_time()
                rate = await images_per_second(
                    pool, folder, args.jobs, args.steps, args.size, args.batch
                )
                bot_cpu[workers].append((time.process_time() - cpu) / args.jobs)
                rates[workers].append(rate)
                spans[workers] += [
                    span.finished_at - span.started_at
                    for slot in pool.slots
                    for span in slot.worker.timeline
                ]
    print(
        f"Throughput, tiny model, {args.size} px, {args.steps} steps, {args.jobs} one-image jobs "
        f"from 4 members, batch ≤ {args.batch}, {args.rounds} rounds, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} cores:"
    )
    for workers, values in rates.items():
        print(
            f"  {workers} worker(s): images/s min {min(values):.2f}  "
            f"median {statistics.median(values):.2f}  max {max(values):.2f};  "
            f"a batch takes its worker {statistics.median(spans[workers]) * 1000:.0f} ms "
            f"(median); the bot process uses {statistics.median(bot_cpu[workers]) * 1000:.0f} "
            "ms CPU per image"
        )
    ratio = statistics.median(rates[2]) / statistics.median(rates[1])
    print(f"  two workers / one worker (medians): {ratio:.2f}×")
    slower = statistics.median(spans[2]) / statistics.median(spans[1])
    print(
        f"  each batch takes {slower:.2f}× as long with two workers side by side (cores shared); "
        f"load average {load:.1f} → {os.getloadavg()[0]:.1f}"
    )


async def one_batch(pool: WorkerBackend, i: int, steps: int, size: int) -> float:
    """Round trip of one one-image batch: acquire, run, release."""
    slot = await pool.acquire()
    started = time.perf_counter()
    results = await slot.run([request(i, steps, size)])
    elapsed = time.perf_counter() - started
    pool.release(slot)
    assert results[0].ok, results[0].error
    return elapsed


async def ray_overhead(args: argparse.Namespace, model: str) -> None:
    """The same batch on a local worker and on a Ray actor, alternately; the difference of
    each pair is what the Ray path adds."""
    import ray

    from inference.ray_backend import RayPool

    config = EngineConfig(model=model, device="cpu", preview_interval=1.0)
    ray.init(num_cpus=2, resources={"bench_gpu": 1}, include_dashboard=False, log_to_driver=False)
    local_times, ray_times = [], []
    try:
        async with (
            LocalPool(config, ["cpu"]) as local,
            RayPool(config, resource="bench_gpu") as remote,
        ):
            for i in range(args.batches + 3):
                pair = (
                    await one_batch(local, i, args.steps, args.size),
                    await one_batch(remote, i, args.steps, args.size),
                )
                if i >= 3:  # warm-up
                    local_times.append(pair[0])
                    ray_times.append(pair[1])
    finally:
        ray.shutdown()
    print(
        f"Per-batch round trip, one {args.size} px {args.steps}-step image, {args.batches} "
        "pairs (local, Ray) after 3 warm-up pairs:"
    )
    for name, values in (("local worker process", local_times), ("Ray actor (local)", ray_times)):
        ms = [v * 1000 for v in values]
        print(
            f"  {name:<21} min {min(ms):7.1f} ms  median {statistics.median(ms):7.1f} ms  "
            f"max {max(ms):7.1f} ms"
        )
    added = [(r - loc) * 1000 for loc, r in zip(local_times, ray_times, strict=True)]
    print(
        f"  added by Ray, per pair: min {min(added):+.1f}  median {statistics.median(added):+.1f}"
        f"  max {max(added):+.1f} ms per batch"
    )


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        model = str(save_dummy_model(tmp / "tiny", "tiny"))
        await throughput(args, model, tmp)
        if not args.skip_ray:
            await ray_overhead(args, model)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1, help="queue.batch_size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=30, help="batches for the Ray latency")
    parser.add_argument("--skip-ray", action="store_true")
    asyncio.run(main(parser.parse_args()))
