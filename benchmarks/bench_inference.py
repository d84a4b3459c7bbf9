"""Inference numbers: Easel's engine against bare diffusers, batching gain, compile, worker.

    python benchmarks/bench_inference.py            # CPU: tiny model + SD 1.5 architecture, small
    python benchmarks/bench_inference.py --gpu      # GPU: SD 1.5 architecture, 512², 25 steps, fp16

Every comparison is paired and interleaved in one run: an Easel `Engine.run` (the worker's own
settings: previews on at the bot's 1 s interval, safety checker on the device, PNG encoding left
to the bot) and then a bare `StableDiffusionPipeline.__call__` of the same pipeline for the same
images (its own safety checker, PIL output), alternating which goes first. Printed as
min / median / max. "it/s" is UNet steps per second: steps / seconds of the whole call, so a
batch of 8 at 25 steps in 1 s is 25 it/s (and 8 images/s).

Weights are random (nothing is downloaded); compute cost does not depend on weight values, so a
random SD 1.5-shaped pipeline (with a real-size CLIP ViT-L/14 safety checker) costs what the
real one costs.

GPU targets (an H100-class card): compiled batch 1 ≥ 60 it/s; Easel within 1.05× of bare
diffusers; batch 8 ≥ 1.5× the images per second of batch 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.dummy import save_dummy_model
from inference.engine import Engine, EngineConfig, encode_pngs
from inference.request import GenerationRequest
from inference.worker import Worker

SAMPLER, GUIDANCE = "DPM++ 2M Karras", 7.0


def spread(values: list[float], unit: str = "s") -> str:
    return (
        f"min {min(values):.3f}  median {statistics.median(values):.3f}  "
        f"max {max(values):.3f} {unit}"
    )


def request(size: int, steps: int, count: int, seed: int = 1) -> GenerationRequest:
    return GenerationRequest(
        prompt="a watercolor fox",
        seed=seed,
        steps=steps,
        width=size,
        height=size,
        count=count,
        sampler=SAMPLER,
        guidance=GUIDANCE,
        job_id="bench",
    )


def bare_call(engine: Engine, size: int, steps: int, count: int, seed: int) -> None:
    """Bare diffusers: the same pipeline object's own __call__, as its documentation shows."""
    import torch

    from inference.samplers import make_scheduler

    pipe = engine.pipe
    pipe.scheduler = make_scheduler(SAMPLER, engine._base_scheduler_config)
    pipe(
        ["a watercolor fox"] * count,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        height=size,
        width=size,
        generator=[torch.Generator("cpu").manual_seed(seed + i) for i in range(count)],
        output_type="pil",
    )


def paired(
    engine: Engine, size: int, steps: int, count: int, pairs: int, sync: Callable[[], None]
) -> tuple[list[float], list[float]]:
    """(Easel seconds, bare seconds) per call, interleaved, after one warm-up of each."""
    previews: list[int] = []

    def easel(seed: int) -> None:
        engine.run([request(size, steps, count, seed)], on_preview=lambda i, b: previews.append(i))

    easel(0)
    bare_call(engine, size, steps, count, 0)
    ours, theirs = [], []
    for i in range(pairs):
        order = [(ours, easel), (theirs, None)]
        for times, call in order if i % 2 == 0 else order[::-1]:
            sync()
            started = time.perf_counter()
            if call is None:
                bare_call(engine, size, steps, count, 100 + i)
            else:
                call(100 + i)
            sync()
            times.append(time.perf_counter() - started)
    return ours, theirs


def print_pair(label: str, ours: list[float], theirs: list[float], steps: int, count: int) -> None:
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    print(f"  {label}")
    print(f"    Easel engine    {spread(ours)}   {steps / statistics.median(ours):6.1f} it/s")
    print(f"    bare diffusers  {spread(theirs)}   {steps / statistics.median(theirs):6.1f} it/s")
    print(f"    Easel / bare    {spread(ratios, '×')}")
    print(
        f"    images/s (median): Easel {count / statistics.median(ours):.2f}, "
        f"bare {count / statistics.median(theirs):.2f}"
    )


def engine_config(folder: Path, **overrides: Any) -> EngineConfig:
    # As the worker runs it (see Settings.engine): previews at the default 1 s interval, PNGs
    # left to the bot's finisher.
    values: dict[str, Any] = dict(model=str(folder), preview_interval=1.0, defer_png=True)
    values.update(overrides)
    return EngineConfig(**values)


def png_cost(engine: Engine, size: int) -> float:
    """Median seconds to encode one image at the bot's zlib level (in the bot, off the GPU)."""
    (result,) = engine.run([request(size, 2, 1)])
    times = []
    for _ in range(5):
        raw = result.images[0].raw
        recipe = result.images[0].recipe
        started = time.perf_counter()
        encode_pngs(result)
        times.append(time.perf_counter() - started)
        result.images[0].raw, result.images[0].recipe, result.images[0].png = raw, recipe, b""
    return statistics.median(times)


def cpu(folder: Path, label: str, size: int, steps: int, pairs: int) -> None:
    engine = Engine(engine_config(folder, device="cpu")).load()
    print(f"{label}, CPU, {size} px, {steps} steps, fp32, {pairs} pairs:")
    for count in (1, 4):
        ours, theirs = paired(engine, size, steps, count, pairs, lambda: None)
        print_pair(f"batch {count}", ours, theirs, steps, count)
    print(f"  PNG encoding in the bot: {png_cost(engine, size) * 1e3:.1f} ms per image")


async def worker_numbers(folder: Path) -> None:
    started = time.perf_counter()
    async with Worker(EngineConfig(model=str(folder), device="cpu")) as worker:
        start_seconds = time.perf_counter() - started
        await worker.run([request(64, 4, 4)])
        times = []
        for i in range(5):
            t = time.perf_counter()
            await worker.run([request(64, 4, 1, seed=i)])
            times.append(time.perf_counter() - t)
        print("Worker process (tiny model, CPU):")
        print(f"  start-up (spawn + import torch/diffusers + load): {start_seconds:.2f} s")
        print(f"  one 64 px image through the worker: {spread(times)}")
        print(f"  peak RSS of the worker: {worker.stats.get('peak_rss_mb', 0):.0f} MiB")


def gpu(
    folder: Path,
    modes: list[str],
    batches: list[int],
    pairs: int,
    compile_mode: str,
    *,
    smoke: bool = False,
) -> None:
    """SD 1.5's architecture at 512², 25 steps, fp16 on CUDA. `smoke`: the same code on the
    CPU with the tiny model (2 steps, dynamo's eager backend), to check this script anywhere."""
    import torch

    device, dtype, size, steps = "cuda", "float16", 512, 25
    extra: dict[str, Any] = {"compile_mode": compile_mode} if compile_mode else {}
    if smoke:
        device, dtype, size, steps = "cpu", "float32", 64, 2
        extra = {"compile_backend": "eager"}

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def peak_gib() -> float:
        return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke run)"
    print(f"SD 1.5 architecture on {name}, {size}², {steps} steps, {dtype}:")
    per_image: dict[tuple[str, int], float] = {}
    for mode in modes:
        started = time.perf_counter()
        engine = Engine(
            engine_config(
                folder,
                device=device,
                dtype=dtype,
                compile=mode == "compiled",
                max_images=max(batches),
                extra=extra,
            )
        ).load()
        loaded = time.perf_counter() - started
        print(
            f"  {mode}: loaded in {loaded:.1f} s"
            + (
                f" (compile warm-up {engine.compile_seconds:.1f} s, "
                f"{engine.compiled_graphs} graphs, {len(engine.warmup_shapes())} shapes)"
                if mode == "compiled"
                else ""
            )
        )
        for batch in batches:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            ours, theirs = paired(engine, size, steps, batch, pairs, sync)
            label = f"{mode} batch {batch} (peak {peak_gib():.2f} GiB)"
            print_pair(label, ours, theirs, steps, batch)
            per_image[(mode, batch)] = statistics.median(ours) / batch
        if 1 in batches:
            ips = {b: 1 / per_image[(mode, b)] for b in batches if (mode, b) in per_image}
            gains = ", ".join(f"batch {b}: {ips[b] / ips[1]:.2f}×" for b in batches if b != 1)
            print(f"  {mode} images/s over batch 1: {gains}")
        print(f"  PNG encoding in the bot: {png_cost(engine, size) * 1e3:.1f} ms per image")
        del engine
        if device == "cuda":
            torch.cuda.empty_cache()
    print(
        "  targets: compiled batch 1 ≥ 60 it/s; Easel / bare ≤ 1.05×; batch 8 ≥ 1.5× the "
        "images/s of batch 1"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpu", action="store_true", help="GPU run (SD 1.5 shape at 512²)")
    parser.add_argument("--no-compile", action="store_true", help="GPU: eager only")
    parser.add_argument("--compile-only", action="store_true", help="GPU: compiled only")
    parser.add_argument("--compile-mode", default="", help="GPU: e.g. max-autotune")
    parser.add_argument("--batches", default="1,4,8", help="GPU batch sizes")
    parser.add_argument("--pairs", type=int, default=0, help="default: 5 GPU, 10 tiny, 3 sd15")
    parser.add_argument("--skip-sd15", action="store_true")
    parser.add_argument("--gpu-smoke", action="store_true", help="the --gpu code, on a CPU")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.gpu_smoke:
            tiny = save_dummy_model(Path(tmp) / "tiny", "tiny")
            gpu(tiny, ["eager", "compiled"], [1, 2], 1, "", smoke=True)
            return
        if args.gpu:
            modes = ["eager", "compiled"]
            if args.no_compile:
                modes = ["eager"]
            if args.compile_only:
                modes = ["compiled"]
            batches = [int(b) for b in args.batches.split(",")]
            folder = save_dummy_model(Path(tmp) / "sd15", "sd15")
            gpu(folder, modes, batches, args.pairs or 5, args.compile_mode)
            return
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        tiny = save_dummy_model(Path(tmp) / "tiny", "tiny")
        cpu(tiny, "Tiny random pipeline (64 px native)", 64, 25, args.pairs or 10)
        asyncio.run(worker_numbers(tiny))
        if not args.skip_sd15:
            sd15 = save_dummy_model(Path(tmp) / "sd15", "sd15", native_size=128)
            cpu(sd15, "SD 1.5 architecture, real-size checker", 128, 4, args.pairs or 3)


if __name__ == "__main__":
    main()
