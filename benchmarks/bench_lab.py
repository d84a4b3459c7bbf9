"""The diffusion lab's cost: each view's time over a plain generation of the same recipe.

    python benchmarks/bench_lab.py                # tiny model, then SD 1.5's architecture small
    python benchmarks/bench_lab.py --skip-sd15    # tiny model only
    python benchmarks/bench_lab.py --skip-tiny --size 256 --steps 20 --decoders tiny --repeats 1

Paired runs (plain, then each view, repeated): the ratio view / plain, min/median/max. Targets
(issue 10): Steps and Words within 1.3× of a plain generation, Noise under 0.2×. Weights are
random (nothing is downloaded); the SD 1.5-shaped pipeline gets a real-size safety checker
(CLIP ViT-L/14 vision tower), the lab a ViT-B/32-sized CLIP and, in the "tiny decoder" rows, a
TAESD-sized AutoencoderTiny as `lab.frame_decoder` (what the default "auto" loads for SD 1.5).
On a CPU with native bf16 the lab's safety checks run bf16 first (fp32 near a line); the random
checker's scores lie far under its lines, so here every check takes that path.
Set OMP_NUM_THREADS=1 on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from inference.dummy import save_dummy_model, save_dummy_tiny_decoder
from inference.engine import Engine, EngineConfig
from inference.lab.dummy import save_clip
from inference.lab.spec import LabConfig, LabRequest
from inference.request import GenerationRequest

VIEWS = ("steps", "words", "noise", "clip")
TARGETS = {"steps": "≤ 1.3×", "words": "≤ 1.3×", "noise": "< 0.2×", "clip": ""}


def timed(engine: Engine, request: GenerationRequest) -> tuple[float, int]:
    """Seconds for one request, and how many pictures the safety checker saw for it."""
    started = time.perf_counter()
    [result] = engine.run([request])
    elapsed = time.perf_counter() - started
    assert result.ok, result.error
    data = result.lab.data if result.lab is not None else {}
    checked = {
        "steps": 2 * len(data.get("frames", [])) + 1,
        "words": len(data.get("words", [])) + 2,
        "noise": len(data.get("timesteps", [])) + 2,
        "clip": 2,
    }.get(result.lab.view if result.lab is not None else "", 1)
    return elapsed, checked


def bench(engine: Engine, title: str, size: int, steps: int, repeats: int) -> None:
    plain = GenerationRequest(
        prompt="a watercolor fox in the snow",
        seed=1,
        steps=steps,
        width=size,
        height=size,
        sampler="DPM++ 2M Karras",
        job_id="plain",
    )
    [made] = engine.run([plain])  # warm-up, and the picture Noise and CLIP look at
    views = {
        view: dataclasses.replace(
            plain,
            job_id=view,
            lab=LabRequest(view, image_ref=(1, 0) if view in ("noise", "clip") else None),  # type: ignore[arg-type]
            init_image=made.images[0].png if view in ("noise", "clip") else None,
        )
        for view in VIEWS
    }
    for request in views.values():
        timed(engine, request)  # warm-up
    tools = engine.lab
    assert tools is not None
    picture = Image.open(io.BytesIO(made.images[0].png)).convert("RGB")
    ratios: dict[str, list[float]] = {view: [] for view in VIEWS}
    unchecked: dict[str, list[float]] = {view: [] for view in VIEWS}
    plains, per_check = [], []
    for _ in range(repeats):
        for view, request in views.items():
            base, _ = timed(engine, plain)
            started = time.perf_counter()
            tools.check([picture] * 4)
            check = (time.perf_counter() - started) / 4
            seconds, checked = timed(engine, request)
            plains.append(base)
            per_check.append(check)
            ratios[view].append(seconds / base)
            # The same, less the safety checks the view adds to the plain image's one.
            unchecked[view].append((seconds - (checked - 1) * check) / base)
    base = statistics.median(plains)
    print(
        f"{title}: {size}×{size} px, {steps} steps, plain {base:.2f} s "
        f"(one safety check {statistics.median(per_check) / base:.2f}× of it)"
    )
    for view in VIEWS:
        r = ratios[view]
        print(
            f"  {view:<6} {statistics.median(r):5.2f}× of plain "
            f"(min {min(r):.2f}, max {max(r):.2f})  target {TARGETS[view] or '—':<7}"
            f"  without its extra safety checks {statistics.median(unchecked[view]):.2f}×"
        )
    started = time.perf_counter()
    tools.clip_similarity(plain.prompt, [picture])
    print(f"  the CLIP line of a plain result: {(time.perf_counter() - started) / base:.3f}×")


def run(
    preset: str, folder: Path, size: int, steps: int, repeats: int, decoders: str = "both"
) -> None:
    model = save_dummy_model(folder / preset, preset)  # sd15 comes with a real-size checker
    clip = save_clip(folder / f"clip-{preset}", preset)
    taesd = save_dummy_tiny_decoder(folder / f"taesd-{preset}", preset)
    variants = [("", "VAE frames"), (str(taesd), "tiny decoder frames")]
    if decoders != "both":
        variants = variants[:1] if decoders == "vae" else variants[1:]
    for decoder, name in variants:
        lab = LabConfig(clip_model=str(clip), frame_decoder=decoder, clip_in_results=False)
        engine = Engine(EngineConfig(model=str(model), device="cpu", lab=lab)).load()
        bench(engine, f"{preset}, {name}", size, steps, repeats)
        del engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-sd15", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=128, help="SD 1.5 image side (px)")
    parser.add_argument("--steps", type=int, default=10, help="SD 1.5 steps")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument(
        "--decoders", choices=("both", "vae", "tiny"), default="both", help="frame decoders"
    )
    args = parser.parse_args()
    if args.skip_tiny and args.skip_sd15:
        parser.error("--skip-tiny and --skip-sd15 leave nothing to measure")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_tiny:
            run("tiny", Path(tmp), 64, 25, max(5, args.repeats), args.decoders)
        if not args.skip_sd15:
            run("sd15", Path(tmp), args.size, args.steps, args.repeats, args.decoders)


if __name__ == "__main__":
    main()
