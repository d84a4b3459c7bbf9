"""The inference engine: one diffusers pipeline, loaded once, that runs batches of requests.

It knows torch and diffusers and nothing of Discord. The worker process owns one `Engine`;
`python -m inference` uses one directly.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .lab.spec import LabConfig
from .request import GeneratedImage, GenerationRequest, GenerationResult, RequestError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch
    from PIL.Image import Image

    from .lab.tools import LabTools

    # A decoded image: (H, W, 3) bytes; None where out-of-memory left a hole.
    Pixels = npt.NDArray[np.uint8]

log = logging.getLogger(__name__)

# transformers warns at import time about optional packages (torchvision) that Easel does not
# use; keep its warnings for real problems only. A user's own setting wins.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = ("auto", "float16", "bfloat16", "float32")

ProgressCallback = Callable[[int, int], None]
PreviewCallback = Callable[[int, bytes], None]

# A linear map from Stable Diffusion's 4 latent channels to RGB: a blurry but recognisable
# preview for the cost of one small matrix product, instead of a VAE decode.
LATENT_TO_RGB = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
PREVIEW_SIDE = 256
# Previews (decode, safety check, encode) may take at most this share of a job's time so far:
# on a GPU that is one every progress interval; on a CPU with a full-size safety checker (a
# second or more each), the first comes late in a long job and short jobs have none.
PREVIEW_BUDGET = 0.03
PREVIEW_JPEG_QUALITY = 80
# zlib level of result PNGs: level 1 is several times faster than PIL's default 6 for a few per
# cent more bytes (and the same seed still gives the same bytes).
PNG_COMPRESS_LEVEL = 1
CancelCheck = Callable[[], Iterable[str]]


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message is one line a person can act on."""


class JobCancelled(Exception):
    """Raised out of the step callback so the pipeline stops without decoding anything."""


@dataclass(frozen=True)
class EngineConfig:
    """How to load and run the pipeline (pickle-safe: it is sent to the worker process)."""

    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    safety_checker: bool = True
    # Optional latent upscaler (hub id or folder); empty = resize + image-to-image.
    upscaler: str = ""
    # Optional inpainting checkpoint for Zoom out and Pan; empty = the base model's own
    # components through AutoPipelineForInpainting.from_pipe (nothing more to download).
    inpaint: str = ""
    # Seconds between cheap progress previews; 0 = none. The first comes after one interval.
    preview_interval: float = 0.0
    # A tiny decoder for previews (diffusers AutoencoderTiny: hub id or folder, e.g.
    # madebyollin/taesd); empty = latents mapped linearly to RGB.
    preview_decoder: str = ""
    # Leave PNG encoding to the caller (`encode_pngs`): the worker does, so it runs in the bot
    # process while the GPU starts on the next batch.
    defer_png: bool = False
    # What the compile warm-up covers: the most images in one pipeline call (batch size ×
    # most images per request) and the largest image (an upscale's size).
    max_images: int = 4
    max_pixels: int = 1024 * 1024
    # Test hooks: fail the first N pipeline calls with out-of-memory errors, etc.
    extra: dict[str, Any] = field(default_factory=dict)
    # The diffusion lab's models and sizes (inference/lab/).
    lab: LabConfig = field(default_factory=LabConfig)


@dataclass
class _Slot:
    """One image to make: which request it belongs to and its own seed."""

    request_index: int
    image_index: int
    prompt: str
    negative: str
    seed: int


def valid_device(name: str) -> bool:
    """auto, cuda, mps, cpu, or one GPU by index: cuda:0, cuda:1, …"""
    index = name.removeprefix("cuda:")
    return name in DEVICES or (index != name and index.isdigit())


def resolve_device(name: str) -> str:
    """`auto` picks cuda, then mps, then cpu; `cuda:N` is GPU number N."""
    import torch

    if not valid_device(name):
        raise ModelLoadError(
            f"Unknown device {name!r}; use one of: {', '.join(DEVICES)}, or cuda:N for GPU N."
        )
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("EASEL_DEVICE is cuda but torch sees no CUDA GPU; use auto or cpu.")
    if name.startswith("cuda:") and not torch.cuda.is_available():
        raise ModelLoadError(f"Device {name} asked for, but torch sees no CUDA GPU.")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ModelLoadError(
            f"There is no GPU {name}: torch sees {torch.cuda.device_count()} (cuda:0 is the first)."
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ModelLoadError("EASEL_DEVICE is mps but this machine has no MPS device.")
    return name


def resolve_dtype(name: str, device: str) -> torch.dtype:
    import torch

    if name not in DTYPES:
        raise ModelLoadError(f"Unknown dtype {name!r}; use one of: {', '.join(DTYPES)}.")
    if name == "auto":
        return torch.float16 if device.startswith(("cuda", "mps")) else torch.float32
    dtype: torch.dtype = getattr(torch, name)
    return dtype


def png_with_recipe(image: Image, recipe: dict[str, Any]) -> bytes:
    """Encode a PIL image as PNG with the recipe in text chunks.

    `parameters` is the line format other Stable Diffusion tools read; `easel` is JSON.
    """
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", recipe_to_parameters(recipe))
    info.add_text("easel", json.dumps(recipe, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def recipe_to_parameters(recipe: dict[str, Any]) -> str:
    """The recipe in AUTOMATIC1111's infotext form, which most Stable Diffusion tools read:
    the prompt, a `Negative prompt:` line, then one line of `Key: value` fields."""
    from .samplers import A1111_NAMES

    lines = [str(recipe.get("prompt", ""))]
    if recipe.get("negative"):
        lines.append(f"Negative prompt: {recipe['negative']}")
    sampler = str(recipe.get("sampler"))
    name, schedule = A1111_NAMES.get(sampler, (sampler, "Automatic"))
    fields: list[tuple[str, Any]] = [
        ("Steps", recipe.get("steps")),
        ("Sampler", name),
        ("Schedule type", schedule),
        ("CFG scale", recipe.get("guidance")),
        ("Seed", recipe.get("seed")),
        ("Size", f"{recipe.get('width')}x{recipe.get('height')}"),
        ("Model", recipe.get("model")),
    ]
    if recipe.get("mode", "txt2img") != "txt2img":
        fields.append(("Mode", recipe["mode"]))
        fields.append(("Denoising strength", recipe.get("strength")))
    fields.append(("Version", f"Easel {easel_version()}"))
    lines.append(", ".join(f"{key}: {_infotext_value(value)}" for key, value in fields))
    return "\n".join(lines)


def _infotext_value(value: Any) -> str:
    """A field value as A1111 writes one: in JSON quotes when it holds `,`, `:` or a newline
    (which would end the field or the line)."""
    text = str(value)
    if any(mark in text for mark in (",", ":", "\n")):
        return json.dumps(text, ensure_ascii=False)
    return text


@functools.cache
def easel_version() -> str:
    """The installed package's version (0.0 when running from an uninstalled tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("easel")
    except PackageNotFoundError:
        return "0.0"


def read_png_recipe(png: bytes) -> dict[str, Any]:
    """The recipe stored in an Easel PNG (empty if there is none)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        text = image.text.get("easel") if hasattr(image, "text") else None
    recipe: dict[str, Any] = json.loads(text) if text else {}
    return recipe


class Engine:
    """Loads one pipeline and runs batches of compatible requests through it."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = "cpu"
        self.dtype: torch.dtype | None = None
        # diffusers pipelines are dynamic objects (components by name): typed as Any.
        self.pipe: Any = None
        self._img2img: Any = None
        self._upscaler: Any = None
        self._inpaint: Any = None
        self.safety_checker: Any = None
        self.feature_extractor: Any = None
        self._base_scheduler_config: Any = None
        self.load_seconds = 0.0
        self._oom_injections = int(config.extra.get("fail_oom_above", 0))
        self.preview_decoder: Any = None  # the AutoencoderTiny of `config.preview_decoder`
        self._on_preview: PreviewCallback | None = None
        self._run_started = 0.0
        self._next_preview = 0.0
        self._preview_spent = 0.0
        # Seconds one preview image costs here (measured at load, then at every preview).
        self._preview_each = 0.0
        self._preview_blocked: set[int] = set()
        self.lab: LabTools | None = None
        # Seconds the compile warm-up took and how many graphs it compiled (0 without compile).
        self.compile_seconds = 0.0
        self.compiled_graphs = 0

    # --- loading -------------------------------------------------------------------------

    def load(self, on_phase: Callable[[str], None] | None = None) -> Engine:
        """Load the pipeline once through `from_pretrained` (hub id or local folder).

        `on_phase("warming up")` is called before the compile warm-up, which can take minutes.
        """
        import torch
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image
        from diffusers.utils import logging as diffusers_logging
        from huggingface_hub.utils import logging as hub_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()
        # Its retry warnings say what the one ModelLoadError sentence says better.
        hub_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        # diffusers passes huggingface_hub an argument it deprecated: not the user's to fix.
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
        started = time.perf_counter()
        self.device = resolve_device(self.config.device)
        self.dtype = resolve_dtype(self.config.dtype, self.device)
        model = self.config.model
        if not model:
            raise ModelLoadError("No model is set; set EASEL_MODEL to a hub id or a folder.")
        if _looks_like_path(model) and not os.path.isdir(model):
            raise ModelLoadError(f"Model folder {model!r} does not exist.")
        pipe = None
        # Without the hub, only the local cache: one clear sentence, not minutes of retries.
        unreachable = None if os.path.isdir(model) else hub_unreachable()
        where: dict[str, Any] = {"local_files_only": True} if unreachable else {}
        if self.dtype == torch.float16 and not os.path.isdir(model):
            # Hub checkpoints often ship fp16 weights: half the download, same images.
            try:
                pipe = AutoPipelineForText2Image.from_pretrained(
                    model, dtype=self.dtype, variant="fp16", **where
                )
            except Exception:
                log.info("%s has no fp16 variant; loading its full weights", model)
        if pipe is None:
            try:
                pipe = AutoPipelineForText2Image.from_pretrained(model, dtype=self.dtype, **where)
            except Exception as error:  # diffusers raises many types; all mean "cannot load"
                message = _explain_load_error(model, error, unreachable=unreachable)
                raise ModelLoadError(message) from None
        # The checker runs on our decoded images (the pipeline's own would black them out).
        self.safety_checker = getattr(pipe, "safety_checker", None)
        self.feature_extractor = getattr(pipe, "feature_extractor", None)
        if not self.config.safety_checker:
            self.safety_checker = None
        elif self.safety_checker is None or self.feature_extractor is None:
            log.warning(
                "%s ships no safety checker: images will not be screened (SDXL and many "
                "fine-tunes have none); moderators still see every prompt in the log",
                model,
            )
        pipe.to(self.device)  # the safety checker is a component: it moves too
        pipe.set_progress_bar_config(disable=True)
        if hasattr(pipe, "unet"):
            # SDPA is diffusers' default attention processor in torch 2; make it explicit.
            from diffusers.models.attention_processor import AttnProcessor2_0

            pipe.unet.set_attn_processor(AttnProcessor2_0())
        if self.config.preview_decoder:
            self.preview_decoder = self._load_preview_decoder(self.config.preview_decoder)
        if self.config.compile:
            self._compile(pipe)
        self.pipe = pipe
        self._base_scheduler_config = pipe.scheduler.config
        self._img2img = AutoPipelineForImage2Image.from_pipe(pipe)
        self._img2img.set_progress_bar_config(disable=True)
        if self.config.upscaler:
            from diffusers import StableDiffusionLatentUpscalePipeline

            try:
                self._upscaler = StableDiffusionLatentUpscalePipeline.from_pretrained(
                    self.config.upscaler, dtype=self.dtype
                ).to(self.device)
            except Exception as error:
                raise ModelLoadError(_explain_load_error(self.config.upscaler, error)) from None
            self._upscaler.set_progress_bar_config(disable=True)
        self._inpaint = self._load_inpaint(pipe)
        from .lab.tools import LabTools

        self.lab = LabTools(self.config.lab, self).load()
        if self.config.preview_interval > 0:
            self._preview_each = self._measure_preview()
        if self.config.compile and not self.config.extra.get("skip_warmup"):
            if on_phase is not None:
                on_phase("warming up")
            self._warm_up()
        self.load_seconds = time.perf_counter() - started
        log.info(
            "Loaded %s on %s (%s) in %.1f s", model, self.device, self.dtype, self.load_seconds
        )
        return self

    def _load_inpaint(self, pipe: Any) -> Any:
        """The inpainting pipeline that Zoom out and Pan paint with."""
        from diffusers import AutoPipelineForInpainting

        if self.config.inpaint:
            try:
                inpaint = AutoPipelineForInpainting.from_pretrained(
                    self.config.inpaint, dtype=self.dtype
                ).to(self.device)
            except Exception as error:
                raise ModelLoadError(_explain_load_error(self.config.inpaint, error)) from None
        else:
            try:
                # The base model's own components: no second download, no second copy.
                inpaint = AutoPipelineForInpainting.from_pipe(pipe)
            except Exception as error:  # a pipeline family diffusers cannot inpaint with
                log.warning("%s cannot inpaint (%s): Zoom out and Pan are off", pipe, error)
                return None
        inpaint.set_progress_bar_config(disable=True)
        return inpaint

    def _measure_preview(self) -> float:
        """Seconds one preview takes (its decode, safety check and JPEG), so even the first
        preview of a job keeps to PREVIEW_BUDGET. The second of two runs: the first warms up."""
        import torch

        side = max(1, self.native_size // self.vae_scale_factor)
        latents = torch.zeros(1, 4, side, side, device=self.device, dtype=self.dtype)
        seconds = 0.0
        for _ in range(2):
            started = time.perf_counter()
            with torch.inference_mode():
                images = self._preview_images(latents)
                self._safety_flags(images)
                pixels = images.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
            _jpeg(pixels.numpy()[0])
            seconds = time.perf_counter() - started
        return seconds

    def _load_preview_decoder(self, name: str) -> Any:
        from diffusers import AutoencoderTiny

        if _looks_like_path(name) and not os.path.isdir(name):
            raise ModelLoadError(f"Preview decoder folder {name!r} does not exist.")
        try:
            decoder = AutoencoderTiny.from_pretrained(name, dtype=self.dtype)
        except Exception as error:
            raise ModelLoadError(_explain_load_error(name, error)) from None
        return decoder.to(self.device).eval()

    def _compile(self, pipe: Any) -> None:
        """The GPU path: channels-last memory, fused attention projections, and the UNet and
        the VAE decoder compiled (shapes are settled by `_warm_up`)."""
        import torch
        import torch._dynamo.config as dynamo_config
        import torch._inductor.config as inductor_config

        backend = str(self.config.extra.get("compile_backend", "inductor"))
        mode = self.config.extra.get("compile_mode")  # e.g. "max-autotune" (benchmarks)
        # Every batch size and aspect gets its graph during the warm-up; none may fall back to
        # eager for hitting dynamo's recompile limit.
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, max(64, getattr(dynamo_config, name)))
        if backend == "inductor":
            inductor_config.conv_1x1_as_mm = True
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        if hasattr(pipe, "fuse_qkv_projections"):
            try:
                pipe.fuse_qkv_projections()
            except Exception as error:  # e.g. a VAE other than AutoencoderKL
                log.warning("Attention projections not fused: %s", error)
        # None: dynamo marks a dimension dynamic once it sees it change (the warm-up does).
        dynamic = self.config.extra.get("compile_dynamic")
        pipe.unet.compile(backend=backend, mode=mode, dynamic=dynamic)
        pipe.vae.decoder.compile(backend=backend, mode=mode, dynamic=dynamic)

    def warmup_shapes(self) -> list[tuple[int, int, int, float]]:
        """(images, width, height, guidance) of the compile warm-up, in order.

        The first call compiles the most common job (one square image, with guidance) as a
        static graph; the next vary the batch size, the size and guidance, so dynamo marks
        those dimensions dynamic; the rest (every aspect, the largest batch, upscale sizes)
        must then run without compiling anything.
        """
        from .request import ASPECTS, aspect_size

        native = self.native_size
        sizes = [aspect_size(aspect, native) for aspect in ASPECTS]
        square = sizes[0]
        shapes: list[tuple[int, int, int, float]] = [
            (1, *square, 7.0),
            (2, *square, 7.0),
            (1, *sizes[1], 7.0),
            (1, *square, 0.0),
            (2, *sizes[2], 0.0),
        ]
        most = max(1, self.config.max_images)
        for width, height in sizes:
            for images in sorted({1, most}):
                for guidance in (7.0, 0.0):
                    shapes.append((images, width, height, guidance))
        for width, height in sizes:
            if 4 * width * height <= self.config.max_pixels:
                shapes.append((1, 2 * width, 2 * height, 7.0))
        return list(dict.fromkeys(shapes))

    def _warm_up(self) -> None:
        """Run every shape members can ask for once, so no member's job pays a compile."""
        from torch._dynamo.utils import counters

        started = time.perf_counter()
        before = int(counters["stats"]["unique_graphs"])
        for images, width, height, guidance in self.warmup_shapes():
            request = GenerationRequest(
                prompt="warm-up",
                seed=0,
                steps=2,
                width=width,
                height=height,
                count=images,
                guidance=guidance,
                job_id="warm-up",
            )
            self._run([request], None, None)
        self.compiled_graphs = int(counters["stats"]["unique_graphs"]) - before
        self.compile_seconds = time.perf_counter() - started
        log.info(
            "Compiled %d graph(s) in a %.1f s warm-up over %d shapes",
            self.compiled_graphs,
            self.compile_seconds,
            len(self.warmup_shapes()),
        )

    @property
    def vae_scale_factor(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor", 8))

    @property
    def native_size(self) -> int:
        """The model's native square size in pixels: 512 for SD 1.5, 1024 for SDXL."""
        return int(self.pipe.unet.config.sample_size) * self.vae_scale_factor

    @property
    def max_prompt_tokens(self) -> int:
        return int(getattr(self.pipe.tokenizer, "model_max_length", 77))

    def prompt_truncated(self, prompt: str) -> bool:
        """True when the text encoder will only see the first 77 tokens of `prompt`."""
        tokenizer = self.pipe.tokenizer
        return len(tokenizer(prompt, truncation=False).input_ids) > self.max_prompt_tokens

    # --- running -------------------------------------------------------------------------

    def run(
        self,
        batch: list[GenerationRequest],
        on_progress: ProgressCallback | None = None,
        cancelled: CancelCheck | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> list[GenerationResult]:
        """Run compatible requests in one pipeline call; one result per request, in order.

        `on_preview(request_index, jpeg)` gets a rough preview of each request's first image
        every `config.preview_interval` seconds while it denoises (if the interval is set),
        the first one interval after the start, none at the last step.
        """
        self._on_preview = on_preview if self.config.preview_interval > 0 else None
        self._run_started = time.perf_counter()
        self._next_preview = self._run_started + self.config.preview_interval
        self._preview_spent = 0.0
        self._preview_blocked = set()
        try:
            return self._run(batch, on_progress, cancelled)
        finally:
            self._on_preview = None

    def _run(
        self,
        batch: list[GenerationRequest],
        on_progress: ProgressCallback | None,
        cancelled: CancelCheck | None,
    ) -> list[GenerationResult]:
        if self.pipe is None:
            raise RuntimeError("Engine.load() must be called first.")
        if not batch:
            return []
        keys = {request.batch_key() for request in batch}
        if len(keys) > 1:
            raise RequestError("A batch must hold requests with the same size, steps and sampler.")
        requests = [request.with_seed() for request in batch]
        results = [
            GenerationResult(
                job_id=request.job_id,
                batch_size=len(requests),
                prompt_truncated=self.prompt_truncated(request.prompt),
            )
            for request in requests
        ]
        job_ids = {request.job_id for request in requests}
        is_cancelled: CancelCheck = cancelled or (lambda: ())
        if requests[0].lab is not None:  # a lab view runs alone (its batch key is its own)
            from .lab.runner import run_lab

            return [run_lab(self, requests[0], on_progress, is_cancelled)]
        slots = [
            _Slot(i, k, request.prompt, request.negative, seed)
            for i, request in enumerate(requests)
            for k, seed in enumerate(request.image_seeds())
        ]
        started = time.perf_counter()
        try:
            images = self._run_slots(requests[0], slots, on_progress, job_ids, is_cancelled)
        except JobCancelled:
            for result in results:
                result.cancelled = True
            return results
        elapsed = time.perf_counter() - started
        stopped = set(is_cancelled())
        total_images = len(slots)
        for index, (result, request) in enumerate(zip(results, requests, strict=True)):
            mine = [
                (slot, array, flag) for slot, array, flag in images if slot.request_index == index
            ]
            if request.job_id in stopped:
                result.cancelled = True
                continue
            if any(array is None for _, array, _ in mine):
                result.error = (
                    "The GPU ran out of memory even for a single image; "
                    "try a smaller size or fewer steps."
                )
                continue
            for slot, array, flag in mine:
                assert array is not None  # out-of-memory holes were answered above
                result.images.append(self._to_image(request, slot, array, flag))
            if self.lab is not None:  # CLIP's score; a flagged image's concept scores
                self.lab.annotate(request, result, [a for _, a, _ in mine if a is not None])
            if not self.config.defer_png:
                encode_pngs(result)
            result.timings = {
                "inference": elapsed * len(mine) / total_images,
                "batch": elapsed,
            }
        return results

    def _run_slots(
        self,
        template: GenerationRequest,
        slots: list[_Slot],
        on_progress: ProgressCallback | None,
        job_ids: set[str],
        cancelled: CancelCheck,
    ) -> list[tuple[_Slot, Pixels | None, bool]]:
        """Run the slots in one call; on out-of-memory, split in halves and retry."""
        import torch

        try:
            images = self._call_pipeline(template, slots, on_progress, job_ids, cancelled)
        except torch.OutOfMemoryError:
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            if len(slots) == 1:
                log.warning(
                    "Out of memory for a single image of %sx%s", template.width, template.height
                )
                return [(slots[0], None, False)]
            half = len(slots) // 2
            log.warning(
                "Out of memory with %d images; retrying as %d + %d",
                len(slots),
                half,
                len(slots) - half,
            )
            return self._run_slots(
                template, slots[:half], on_progress, job_ids, cancelled
            ) + self._run_slots(template, slots[half:], on_progress, job_ids, cancelled)
        # Checked on the device, then copied to the CPU as bytes (a quarter of float32).
        flags = self._safety_flags(images)
        pixels = images.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return list(zip(slots, list(pixels), flags, strict=True))

    def _call_pipeline(
        self,
        template: GenerationRequest,
        slots: list[_Slot],
        on_progress: ProgressCallback | None,
        job_ids: set[str],
        cancelled: CancelCheck,
    ) -> torch.Tensor:
        """The slots' images, decoded: (N, 3, H, W) floats in [0, 1] on the device."""
        import torch

        if self._oom_injections and len(slots) > self._oom_injections:
            # Test hook standing in for a real CUDA out-of-memory error on big batches.
            raise torch.OutOfMemoryError("injected out of memory")
        generators = [torch.Generator("cpu").manual_seed(slot.seed) for slot in slots]
        prompts = [slot.prompt for slot in slots]
        negatives = [slot.negative for slot in slots]
        total = template.steps

        def step_end(
            pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            if job_ids and job_ids <= set(cancelled()):
                raise JobCancelled()
            steps = getattr(pipe, "num_timesteps", None) or total
            if step + 1 < steps:  # the result itself follows the last step
                self._maybe_preview(slots, callback_kwargs.get("latents"))
            if on_progress is not None:
                on_progress(step + 1, steps)
            return callback_kwargs

        common: dict[str, Any] = dict(
            prompt=prompts,
            negative_prompt=negatives if any(negatives) else None,
            num_inference_steps=template.steps,
            guidance_scale=template.guidance,
            generator=generators,
            output_type="latent",
            callback_on_step_end=step_end,
        )
        scheduler = self._scheduler(template.sampler)
        with torch.inference_mode():
            if template.mode == "txt2img":
                self.pipe.scheduler = scheduler
                latents = self.pipe(width=template.width, height=template.height, **common).images
            elif template.mode == "upscale" and self._upscaler is not None:
                return self._latent_upscale(template, slots, generators)
            elif template.mode == "outpaint":
                return self._outpaint(template, scheduler, len(slots), common)
            else:
                init = self._init_image(template)
                self._img2img.scheduler = scheduler
                latents = self._img2img(
                    image=[init] * len(slots), strength=template.strength, **common
                ).images
            return self._decode(latents)

    def _maybe_preview(self, slots: list[_Slot], latents: torch.Tensor | None) -> None:
        """Send each request's first image as a cheap preview, at most once an interval.

        Decoded, resized and safety-checked on the device in one batch; only the previews that
        pass are copied to the CPU, as bytes, and encoded as JPEG.
        """
        import torch

        if self._on_preview is None or latents is None or latents.shape[1] != 4:
            return
        started = time.perf_counter()
        if started < self._next_preview:
            return
        wanted = [
            (position, slot.request_index)
            for position, slot in enumerate(slots)
            if slot.image_index == 0
            and position < latents.shape[0]
            and slot.request_index not in self._preview_blocked
        ]
        # Within budget: all previews so far and this one, against the job's time so far.
        expected = self._preview_each * len(wanted)
        if self._preview_spent + expected > PREVIEW_BUDGET * (started - self._run_started):
            return
        if wanted:
            with torch.inference_mode():
                images = self._preview_images(latents[[position for position, _ in wanted]])
                # Previews are shown before the result: the safety checker sees them first,
                # and a job whose preview it flags shows no more previews.
                flags = self._safety_flags(images)
                pixels = images.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
            for (_, request_index), flag, image in zip(wanted, flags, pixels.numpy(), strict=True):
                if flag:
                    self._preview_blocked.add(request_index)
                else:
                    self._on_preview(request_index, _jpeg(image))
        cost = time.perf_counter() - started
        self._preview_spent += cost
        if wanted:
            self._preview_each = cost / len(wanted)
        self._next_preview = started + self.config.preview_interval

    def _preview_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (N, 4, h, w) to small images (N, 3, H, W) in [0, 1], longer side
        PREVIEW_SIDE: through the tiny decoder if there is one, else the linear RGB map."""
        import torch
        import torch.nn.functional as F

        decoder = self.preview_decoder
        if decoder is not None:
            scaled = latents.to(decoder.dtype) / decoder.config.scaling_factor
            decoded = decoder.decode(scaled, return_dict=False)[0].float()
            images = (decoded / 2 + 0.5).clamp(0, 1)
        else:
            factors = torch.tensor(LATENT_TO_RGB, dtype=torch.float32, device=latents.device)
            rgb = torch.einsum("nchw,cr->nrhw", latents.float(), factors)
            images = ((rgb + 1) / 2).clamp(0, 1)
        height, width = images.shape[-2:]
        scale = PREVIEW_SIDE / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        resized = F.interpolate(images, size=size, mode="bilinear", antialias=True)
        return resized.clamp(0, 1)

    def _scheduler(self, sampler: str) -> Any:
        from .samplers import make_scheduler

        return make_scheduler(sampler, self._base_scheduler_config)

    def _init_image(self, request: GenerationRequest) -> Image:
        from PIL import Image

        if request.init_image is None:
            raise RequestError(f"A {request.mode} request needs a source image.")
        image = Image.open(io.BytesIO(request.init_image)).convert("RGB")
        if image.size != (request.width, request.height):
            image = image.resize((request.width, request.height), Image.Resampling.LANCZOS)
        return image

    def _outpaint(
        self, request: GenerationRequest, scheduler: Any, count: int, common: dict[str, Any]
    ) -> torch.Tensor:
        """Zoom out / Pan: paint the new area around the source, then blend it in so that the
        source's pixels are kept outside the blend band. Images (N, 3, H, W) in [0, 1] on the
        device, like `_decode`'s."""
        import numpy as np
        import torch
        from PIL import Image

        from .outpaint import blend_mask, canvas_pixels, composite, paint_mask

        if self._inpaint is None:
            raise RequestError("This model cannot zoom out or pan (it has no inpainting pipeline).")
        if request.paste is None:
            raise RequestError("A zoom or pan needs the place of its source on the canvas.")
        _, _, width, height = request.paste
        source = self._init_image(dataclasses.replace(request, width=width, height=height))
        canvas = canvas_pixels(
            np.asarray(source, dtype=np.uint8), request.width, request.height, request.paste
        )
        blend = blend_mask(request.width, request.height, request.paste, request.feather)
        mask = Image.fromarray(paint_mask(blend))  # 2-D uint8: mode L
        self._inpaint.scheduler = scheduler
        latents = self._inpaint(
            image=[Image.fromarray(canvas)] * count,
            mask_image=[mask] * count,
            width=request.width,
            height=request.height,
            strength=request.strength,
            **common,
        ).images
        base = canvas.astype(np.float32) / 255.0
        decoded = self._decode(latents)
        # The blend is numpy work on the CPU; Zoom out and Pan are rare enough for the copy.
        painted = decoded.permute(0, 2, 3, 1).cpu().numpy()
        blended = np.stack([composite(base, image, blend) for image in painted])
        return torch.from_numpy(blended).permute(0, 3, 1, 2).to(decoded.device)

    def screen(self, pngs: Sequence[bytes]) -> list[bool]:
        """The safety checker's verdict on images given as PNG bytes (an upload, before any
        work is done on it)."""
        import numpy as np
        import torch
        from PIL import Image

        flags = []
        for png in pngs:
            with Image.open(io.BytesIO(png)) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
            # (1, 3, H, W) in [0, 1] on the device, as the checker sees a decoded image.
            tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].to(self.device)
            flags += self._safety_flags(tensor.float() / 255.0)
        return flags

    def _latent_upscale(
        self, request: GenerationRequest, slots: list[_Slot], generators: list[torch.Generator]
    ) -> torch.Tensor:
        import torch

        source = self._init_image(
            GenerationRequest(
                prompt="",
                init_image=request.init_image,
                width=request.width // 2,
                height=request.height // 2,
            )
        )
        arrays = []
        for slot, generator in zip(slots, generators, strict=True):
            out = self._upscaler(
                prompt=slot.prompt,
                image=source,
                num_inference_steps=request.steps,
                guidance_scale=0,
                generator=generator,
                output_type="pt",
            )
            arrays.append(out.images[0].float())
        return torch.stack(arrays)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents to images in [0, 1] (N, 3, H, W) on the device; NaN/black fp16 decodes are
        redone in fp32."""
        import torch

        vae = self.pipe.vae
        scaled = latents / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None):
            scaled = scaled + vae.config.shift_factor
        decoded = self._vae_decode(scaled.to(vae.dtype)).float()
        broken = [
            i
            for i in range(decoded.shape[0])
            if not torch.isfinite(decoded[i]).all() or decoded[i].max() <= -0.99
        ]
        if broken:
            log.warning(
                "Decoding %d image(s) again in fp32 (NaN or black in %s)", len(broken), vae.dtype
            )
            original_dtype = vae.dtype
            vae.to(torch.float32)
            try:
                redo = self._vae_decode(scaled[broken].float()).float()
            finally:
                vae.to(original_dtype)
            decoded[broken] = redo
        images: torch.Tensor = (decoded / 2 + 0.5).clamp(0, 1).nan_to_num(0.0)
        return images

    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        decoded: torch.Tensor = self.pipe.vae.decode(latents, return_dict=False)[0]
        return decoded

    def _safety_flags(self, images: torch.Tensor) -> list[bool]:
        """Run the checkpoint's safety checker on decoded images (N, 3, H, W) in [0, 1], in one
        call on the device, without blacking them out."""
        import torch

        if self.safety_checker is None or self.feature_extractor is None or not len(images):
            return [False] * len(images)
        with torch.inference_mode():
            clip_input = self.clip_input(images)
            # The checker blacks flagged images out in place: it gets a placeholder to black
            # out, so ours stay intact (and nothing is copied).
            placeholder = torch.zeros(len(images), 1, device=images.device)
            _, flags = self.safety_checker(images=placeholder, clip_input=clip_input)
        return [bool(flag) for flag in flags]

    def clip_input(self, images: torch.Tensor) -> torch.Tensor:
        """The safety checker's input, made on the device as the feature extractor makes it on
        the CPU: pixels rounded to bytes, the shortest edge resized (antialiased bicubic in
        two passes, as PIL does), centre-cropped, rescaled and normalised with its own mean and
        std. One call for the whole batch."""
        import torch
        import torch.nn.functional as F

        fe = self.feature_extractor
        dtype = self.safety_checker.dtype
        plan = _clip_plan(fe)
        if plan is None:  # a feature extractor configured some other way: use it as it is
            return _clip_input_pil(fe, images).to(images.device, dtype)
        shortest, (crop_h, crop_w), mode = plan
        x = images.float().mul(255).round().clamp(0, 255)
        if shortest:
            height, width = x.shape[-2:]
            short, long = (width, height) if width <= height else (height, width)
            new_long = int(shortest * long / short)
            size = (new_long, shortest) if width <= height else (shortest, new_long)
            # On a CPU, torch resizes bytes itself (about 10× faster than floats, and as close
            # to PIL); a GPU resizes floats, rounded to bytes after each pass.
            on_cpu = x.device.type == "cpu"
            if on_cpu:
                x = x.to(torch.uint8).contiguous(memory_format=torch.channels_last)
            # As PIL does: the width first, then the height, bytes to bytes in each pass.
            for target in ((height, size[1]), size):
                if tuple(x.shape[-2:]) != tuple(target):
                    x = F.interpolate(x, size=target, mode=mode, antialias=True)
                    x = x if on_cpu else x.round().clamp(0, 255)
        if crop_h:
            height, width = x.shape[-2:]
            if height < crop_h or width < crop_w:
                return _clip_input_pil(fe, images).to(images.device, dtype)
            top, left = (height - crop_h) // 2, (width - crop_w) // 2
            x = x[..., top : top + crop_h, left : left + crop_w]
        x = x.contiguous().float()
        # Rescale and normalise as one multiply-add per pixel: x · (r / std) − mean / std.
        scale = torch.full((3,), float(fe.rescale_factor) if fe.do_rescale else 1.0)
        bias = torch.zeros(3)
        if fe.do_normalize:
            std = torch.tensor(fe.image_std, dtype=torch.float32)
            scale, bias = scale / std, -torch.tensor(fe.image_mean, dtype=torch.float32) / std
        x = torch.addcmul(
            bias.to(x.device).view(1, -1, 1, 1), x, scale.to(x.device).view(1, -1, 1, 1)
        )
        return x.to(dtype)

    def _to_image(
        self, request: GenerationRequest, slot: _Slot, array: Pixels, flag: bool
    ) -> GeneratedImage:
        import numpy as np

        pixels = np.ascontiguousarray(array)
        height, width = pixels.shape[:2]
        recipe = request.recipe()
        recipe.update(
            seed=slot.seed,
            count=1,
            width=width,
            height=height,
            model=request.model or self.config.model,
        )
        return GeneratedImage(
            png=b"",
            seed=slot.seed,
            index=slot.image_index,
            nsfw=flag,
            width=width,
            height=height,
            raw=pixels.tobytes(),
            recipe=recipe,
        )


def encode_pngs(result: GenerationResult) -> GenerationResult:
    """Encode the images the engine left raw (`raw` → `png`, with the recipe); returns the
    result. PIL releases the GIL while it compresses, so a thread can do this."""
    from PIL import Image

    for image in result.images:
        if image.raw is None:
            continue
        pixels = Image.frombytes("RGB", (image.width, image.height), image.raw)
        image.png = png_with_recipe(pixels, image.recipe or {})
        image.raw = image.recipe = None
    return result


def _clip_plan(fe: Any) -> tuple[int, tuple[int, int], str] | None:
    """(shortest edge or 0, crop (height, width) or (0, 0), interpolation) of a CLIP feature
    extractor, or None when it is configured in a way the device path does not copy."""
    modes = {2: "bilinear", 3: "bicubic"}  # PIL's resample codes
    size = dict(getattr(fe, "size", None) or {})
    crop = dict(getattr(fe, "crop_size", None) or {})
    resize = bool(getattr(fe, "do_resize", False))
    if resize and (set(size) != {"shortest_edge"} or int(getattr(fe, "resample", 0)) not in modes):
        return None
    if getattr(fe, "do_center_crop", False) and not {"height", "width"} <= set(crop):
        return None
    shortest = int(size["shortest_edge"]) if resize else 0
    cropping = bool(getattr(fe, "do_center_crop", False))
    crop_hw = (int(crop["height"]), int(crop["width"])) if cropping else (0, 0)
    mode = modes.get(int(getattr(fe, "resample", 3)), "bicubic")
    return shortest, crop_hw, mode


def _clip_input_pil(fe: Any, images: torch.Tensor) -> torch.Tensor:
    """The feature extractor's own path (PIL, on the CPU): the reference for the device path."""
    from diffusers.utils.pil_utils import numpy_to_pil

    arrays = images.float().permute(0, 2, 3, 1).cpu().numpy()
    pixel_values: torch.Tensor = fe(numpy_to_pil(arrays), return_tensors="pt").pixel_values
    return pixel_values


def _jpeg(pixels: npt.NDArray[np.uint8]) -> bytes:
    """A preview as JPEG: a fraction of a millisecond, where an optimised PNG took tens."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=PREVIEW_JPEG_QUALITY)
    return buffer.getvalue()


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith((".", "/", "~"))
        or (os.sep in model and model.count("/") != 1)
        or os.path.exists(model)
    )


_PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set, read as huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def error_line(error: Exception) -> str:
    """An exception's first line, or its type's name when it says nothing."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """The hub's host:port if a TCP connection to it fails (None: reachable, or unknown).

    One connection attempt with a timeout, where huggingface_hub would retry every file for
    half a minute. Behind a proxy the hub is not asked directly, so nothing is probed.
    """
    if hub_offline():
        return None  # huggingface_hub itself stays offline
    if any(os.environ.get(name) for name in _PROXIES):
        return None
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError:
        return f"{host}:{port}" if url.port else host


def _network_failure(error: BaseException) -> bool:
    """A connection error anywhere in the chain (diffusers rewords it as a missing file)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        name = type(current).__name__
        if isinstance(current, ConnectionError | TimeoutError | socket.gaierror) or name in (
            "ConnectError",
            "ConnectTimeout",
            "OfflineModeIsEnabled",
            "LocalEntryNotFoundError",
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def _explain_load_error(model: str, error: Exception, *, unreachable: str | None = None) -> str:
    text = error_line(error)
    if os.path.isdir(model):
        return f"{model!r} is not a diffusers model folder ({text})."
    if (
        unreachable
        or hub_offline()
        or _network_failure(error)
        or "connect" in text.lower()
        or "offline" in text.lower()
    ):
        hub = f"the hub ({unreachable})" if unreachable else "the hub"
        return (
            f"Could not load {model!r}: it is not in the local cache and {hub} cannot be "
            "reached; download it once with network access, or point EASEL_MODEL at a folder."
        )
    return f"Could not load {model!r}: {text}"
