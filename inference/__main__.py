"""Command line: `python -m inference generate "a watercolor fox" --out fox.png`.

Checks a GPU (or a model folder) without Discord: it loads the model the bot would load,
shows a progress bar, writes PNGs that carry their recipe and prints each seed and path.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .request import (
    ASPECTS,
    MAX_SEED,
    SAMPLERS,
    GenerationRequest,
    Limits,
    RequestError,
    aspect_size,
    validate,
)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def _device(name: str) -> str:
    from .engine import valid_device

    if not valid_device(name):
        raise argparse.ArgumentTypeError(f"{name!r}: use auto, cuda, cuda:N, mps or cpu")
    return name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inference", description="Easel's Stable Diffusion engine, alone."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="make images from a prompt")
    gen.add_argument("prompt")
    gen.add_argument("--negative", default="", help="what to keep out of the image")
    gen.add_argument("--seed", type=int, help=f"0…{MAX_SEED}; random if left out")
    gen.add_argument("--steps", type=int, default=25)
    gen.add_argument("--guidance", type=float, default=7.0)
    size = gen.add_mutually_exclusive_group()
    size.add_argument("--aspect", choices=list(ASPECTS), default=None)
    size.add_argument("--width", type=int)
    gen.add_argument("--height", type=int)
    gen.add_argument("--count", type=int, default=1, help="images to make (each its own seed)")
    gen.add_argument("--sampler", choices=list(SAMPLERS), default="DPM++ 2M Karras")
    gen.add_argument(
        "--model",
        default=os.environ.get("EASEL_MODEL", DEFAULT_MODEL),
        help="hub id or local diffusers folder (default: $EASEL_MODEL or SD 1.5)",
    )
    gen.add_argument(
        "--device",
        default=os.environ.get("EASEL_DEVICE", "auto"),
        type=_device,
        help="auto, cuda, cuda:N (GPU number N), mps or cpu",
    )
    gen.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    gen.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    gen.add_argument(
        "--no-safety-checker", action="store_true", help="skip the checkpoint's safety checker"
    )
    gen.add_argument(
        "--out",
        default=None,
        help="PNG path (default: easel-SEED.png); with "
        "--count > 1 the files are numbered NAME-1.png, NAME-2.png, …",
    )

    dummy = commands.add_parser(
        "dummy-model", help="write a random-weight pipeline (for offline checks)"
    )
    dummy.add_argument("folder")
    dummy.add_argument("--preset", choices=["tiny", "sd15"], default="tiny")
    dummy.add_argument(
        "--always-flag", action="store_true", help="a safety checker that flags every image"
    )
    return parser


def _out_paths(out: str | None, seeds: list[int]) -> list[Path]:
    if out is None:
        return [Path(f"easel-{seed}.png") for seed in seeds]
    path = Path(out)
    if len(seeds) == 1:
        return [path]
    return [
        path.with_name(f"{path.stem}-{i + 1}{path.suffix or '.png'}") for i in range(len(seeds))
    ]


def generate(args: argparse.Namespace) -> int:
    if args.height is not None and args.width is None:
        print("error: --height needs --width too (or use --aspect).", file=sys.stderr)
        return 2
    request = GenerationRequest(
        prompt=args.prompt,
        negative=args.negative,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        count=args.count,
        sampler=args.sampler,
        model=args.model,
        job_id="cli",
    )
    limits = Limits(
        max_steps=500,
        max_guidance=50.0,
        max_count=16,
        max_pixels=4096 * 4096,
        max_prompt_chars=4000,
    )
    try:
        if args.width is not None:
            request.width, request.height = args.width, args.height or args.width
        request = validate(request, limits)
    except RequestError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    from .engine import Engine, EngineConfig, ModelLoadError

    config = EngineConfig(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        safety_checker=not args.no_safety_checker,
    )
    print(f"Loading {args.model} …", file=sys.stderr)
    try:
        engine = Engine(config).load()
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.width is None:
        request.width, request.height = aspect_size(args.aspect or "square", engine.native_size)
    try:
        request = validate(request, limits).with_seed()
    except RequestError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if engine.prompt_truncated(request.prompt):
        print(
            f"note: the prompt is longer than {engine.max_prompt_tokens} tokens; "
            "the model only sees the first part.",
            file=sys.stderr,
        )

    bar = tqdm(total=request.steps, unit="step", file=sys.stderr, leave=False)

    def progress(step: int, total: int) -> None:
        bar.total = total
        bar.n = step
        bar.refresh()

    try:
        (result,) = engine.run([request], on_progress=progress)
    finally:
        bar.close()
    if result.error:
        print(f"error: {result.error}", file=sys.stderr)
        return 1
    paths = _out_paths(args.out, [image.seed for image in result.images])
    flagged = 0
    for image, path in zip(result.images, paths, strict=True):
        if image.nsfw:
            flagged += 1
            print(f"seed {image.seed}: flagged by the safety checker; not written.")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image.png)
        print(f"seed {image.seed}: {path} ({image.width}×{image.height})")
    seconds = result.timings.get("batch", 0.0)
    print(f"{len(result.images)} image(s) in {seconds:.2f} s on {engine.device}.", file=sys.stderr)
    return 3 if flagged else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "generate":
        return generate(args)
    from .dummy import save_dummy_model

    folder = save_dummy_model(args.folder, args.preset, always_flag=args.always_flag)
    print(f"Wrote a random-weight {args.preset} pipeline to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
