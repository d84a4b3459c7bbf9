"""Inference numbers: seconds per image, batching gain, worker start-up and memory.

    python benchmarks/bench_inference.py            # CPU: tiny model + SD 1.5 architecture, small
    python benchmarks/bench_inference.py --gpu      # GPU: SD 1.5 architecture, 512², 25 steps

Weights are random (nothing is downloaded); compute cost does not depend on weight values, so a
random SD 1.5-shaped pipeline costs what the real one costs.
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

from inference.dummy import save_dummy_model
from inference.engine import Engine, EngineConfig
from inference.request import GenerationRequest
from inference.worker import Worker


def per_image(engine: Engine, size: int, steps: int, count: int, repeats: int) -> float:
    """Median seconds per image of one pipeline call making `count` images."""
    request = GenerationRequest(
        prompt="a watercolor fox",
        seed=1,
        steps=steps,
        width=size,
        height=size,
        count=count,
        job_id="bench",
    )
    engine.run([request])  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        engine.run([request])
        times.append((time.perf_counter() - started) / count)
    return statistics.median(times)


def cpu_tiny(folder: Path) -> None:
    engine = Engine(EngineConfig(model=str(folder), device="cpu")).load()
    print("Tiny random pipeline (64 px native), CPU, 4 steps, fp32:")
    for size in (64, 128):
        one = per_image(engine, size, 4, 1, 10)
        four = per_image(engine, size, 4, 4, 10)
        print(
            f"  {size:>4} px  batch 1: {one:.3f} s/image   batch 4: {four:.3f} s/image   "
            f"batching gain {one / four:.2f}×"
        )


async def worker_numbers(folder: Path) -> None:
    started = time.perf_counter()
    async with Worker(EngineConfig(model=str(folder), device="cpu")) as worker:
        start_seconds = time.perf_counter() - started
        request = GenerationRequest(
            prompt="a fox", seed=1, steps=4, width=64, height=64, count=4, job_id="w"
        )
        await worker.run([request])
        times = []
        for i in range(5):
            t = time.perf_counter()
            await worker.run(
                [
                    GenerationRequest(
                        prompt="a fox", seed=i, steps=4, width=64, height=64, count=1, job_id=str(i)
                    )
                ]
            )
            times.append(time.perf_counter() - t)
        print("Worker process (tiny model, CPU):")
        print(f"  start-up (spawn + import torch/diffusers + load): {start_seconds:.2f} s")
        print(f"  one 64 px image through the worker: {statistics.median(times):.3f} s")
        print(f"  peak RSS of the worker: {worker.stats.get('peak_rss_mb', 0):.0f} MiB")


def cpu_sd15(folder: Path) -> None:
    engine = Engine(EngineConfig(model=str(folder), device="cpu", safety_checker=False)).load()
    print("SD 1.5 architecture (random weights), CPU, 128 px, 2 steps, fp32:")
    one = per_image(engine, 128, 2, 1, 3)
    four = per_image(engine, 128, 2, 4, 3)
    print(
        f"  batch 1: {one:.2f} s/image   batch 4: {four:.2f} s/image   "
        f"batching gain {one / four:.2f}×"
    )


def gpu_sd15(folder: Path, compile_too: bool) -> None:
    import torch

    modes = [False, True] if compile_too else [False]
    print(f"SD 1.5 architecture on {torch.cuda.get_device_name()}, 512², 25 steps, fp16:")
    for compiled in modes:
        engine = Engine(
            EngineConfig(
                model=str(folder),
                device="cuda",
                dtype="float16",
                compile=compiled,
                safety_checker=False,
            )
        ).load()
        for batch in (1, 4, 8):
            torch.cuda.reset_peak_memory_stats()
            seconds = per_image(engine, 512, 25, batch, 3)
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(
                f"  {'compiled' if compiled else 'eager   '} batch {batch}: "
                f"{seconds:.3f} s/image  {1 / seconds:.2f} images/s  "
                f"{25 * batch / (seconds * batch):.1f} it/s  peak {peak:.2f} GiB"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpu", action="store_true", help="GPU run (SD 1.5 shape at 512²)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--skip-sd15", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.gpu:
            gpu_sd15(save_dummy_model(Path(tmp) / "sd15", "sd15"), not args.no_compile)
            return
        tiny = save_dummy_model(Path(tmp) / "tiny", "tiny")
        cpu_tiny(tiny)
        asyncio.run(worker_numbers(tiny))
        if not args.skip_sd15:
            cpu_sd15(save_dummy_model(Path(tmp) / "sd15", "sd15"))


if __name__ == "__main__":
    main()
