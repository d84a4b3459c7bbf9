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

    # A decoded image: (H, W, 3) floats in [0, 1]; None where out-of-memory left a hole.
    Pixels = npt.NDArray[np.float32]

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
    # Seconds between cheap progress previews (latents mapped straight to RGB); 0 = none.
    preview_interval: float = 0.0
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
    image.save(buffer, format="PNG", pnginfo=info)
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
        self._on_preview: PreviewCallback | None = None
        self._last_preview = 0.0
        self._preview_blocked: set[int] = set()
        self.lab: LabTools | None = None

    # --- loading -------------------------------------------------------------------------

    def load(self) -> Engine:
        """Load the pipeline once through `from_pretrained` (hub id or local folder)."""
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
        if self.config.compile:
            pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=False)
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

        `on_preview(request_index, png)` gets a rough preview of each request's first image
        every `config.preview_interval` seconds while it denoises (if the interval is set).
        """
        self._on_preview = on_preview if self.config.preview_interval > 0 else None
        self._last_preview = 0.0
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
            arrays = self._call_pipeline(template, slots, on_progress, job_ids, cancelled)
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
        flags = self._safety_flags(arrays)
        return list(zip(slots, arrays, flags, strict=True))

    def _call_pipeline(
        self,
        template: GenerationRequest,
        slots: list[_Slot],
        on_progress: ProgressCallback | None,
        job_ids: set[str],
        cancelled: CancelCheck,
    ) -> list[Pixels]:
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
            self._maybe_preview(slots, callback_kwargs.get("latents"))
            if on_progress is not None:
                on_progress(step + 1, getattr(pipe, "num_timesteps", None) or total)
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
        """Send each request's first image as a cheap preview, at most once an interval."""
        import numpy as np

        if self._on_preview is None or latents is None or latents.shape[1] != 4:
            return
        now = time.perf_counter()
        if now - self._last_preview < self.config.preview_interval:
            return
        self._last_preview = now
        for position, slot in enumerate(slots):
            if slot.image_index != 0 or position >= latents.shape[0]:
                continue
            if slot.request_index in self._preview_blocked:
                continue
            pixels = latent_preview_pixels(latents[position])
            # Previews are shown before the result: the safety checker sees them first, and
            # a job whose preview it flags shows no more previews.
            if self._safety_flags([(pixels / 255.0).astype(np.float32)])[0]:
                self._preview_blocked.add(slot.request_index)
                continue
            self._on_preview(slot.request_index, _png(pixels))

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
    ) -> list[Pixels]:
        """Zoom out / Pan: paint the new area around the source, then blend it in so that the
        source's pixels are kept outside the blend band."""
        import numpy as np
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
        return [composite(base, painted, blend) for painted in self._decode(latents)]

    def screen(self, pngs: Sequence[bytes]) -> list[bool]:
        """The safety checker's verdict on images given as PNG bytes (an upload, before any
        work is done on it)."""
        import numpy as np
        from PIL import Image

        flags = []
        for png in pngs:
            with Image.open(io.BytesIO(png)) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            flags += self._safety_flags([pixels])
        return flags

    def _latent_upscale(
        self, request: GenerationRequest, slots: list[_Slot], generators: list[torch.Generator]
    ) -> list[Pixels]:
        import numpy as np

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
                output_type="np",
            )
            arrays.append(np.asarray(out.images[0], dtype=np.float32))
        return arrays

    def _decode(self, latents: torch.Tensor) -> list[Pixels]:
        """Latents to images in [0, 1] (N, H, W, 3); NaN/black fp16 decodes are redone in fp32."""
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
        images = (decoded / 2 + 0.5).clamp(0, 1).nan_to_num(0.0)
        return list(images.permute(0, 2, 3, 1).cpu().numpy())

    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        decoded: torch.Tensor = self.pipe.vae.decode(latents, return_dict=False)[0]
        return decoded

    def _safety_flags(self, arrays: Sequence[Pixels | None]) -> list[bool]:
        """Run the checkpoint's safety checker on decoded images, without blacking them out."""
        import numpy as np
        import torch

        if self.safety_checker is None or self.feature_extractor is None:
            return [False] * len(arrays)
        present = [a for a in arrays if a is not None]
        if not present:
            return [False] * len(arrays)
        from diffusers.utils.pil_utils import numpy_to_pil

        stack = np.stack(present)
        features = self.feature_extractor(numpy_to_pil(stack), return_tensors="pt")
        with torch.inference_mode():
            _, flags = self.safety_checker(
                images=stack.copy(),
                clip_input=features.pixel_values.to(self.device, self.safety_checker.dtype),
            )
        flags_iter = iter(bool(f) for f in flags)
        return [next(flags_iter) if a is not None else False for a in arrays]

    def _to_image(
        self, request: GenerationRequest, slot: _Slot, array: Pixels, flag: bool
    ) -> GeneratedImage:
        import numpy as np
        from PIL import Image

        pixels = (np.asarray(array) * 255).round().astype("uint8")
        image = Image.fromarray(pixels)
        recipe = request.recipe()
        recipe.update(
            seed=slot.seed,
            count=1,
            width=image.width,
            height=image.height,
            model=request.model or self.config.model,
        )
        return GeneratedImage(
            png=png_with_recipe(image, recipe),
            seed=slot.seed,
            index=slot.image_index,
            nsfw=flag,
            width=image.width,
            height=image.height,
        )


def latent_preview_pixels(latent: torch.Tensor) -> npt.NDArray[np.uint8]:
    """One image's latents (4, h, w) mapped linearly to RGB: uint8 (h', w', 3), longer side
    PREVIEW_SIDE."""
    import numpy as np
    import torch
    from PIL import Image

    factors = torch.tensor(LATENT_TO_RGB, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latent.detach().float().cpu(), factors)
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    image = Image.fromarray(pixels)
    scale = PREVIEW_SIDE / max(image.size)
    image = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.BILINEAR,
    )
    return np.asarray(image)


def latent_preview(latent: torch.Tensor) -> bytes:
    """A small PNG from one image's latents (4, h, w), mapped linearly to RGB."""
    return _png(latent_preview_pixels(latent))


def _png(pixels: npt.NDArray[np.uint8]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith((".", "/", "~"))
        or (os.sep in model and model.count("/") != 1)
        or os.path.exists(model)
    )


_PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """The hub's host:port if a TCP connection to it fails (None: reachable, or unknown).

    One connection attempt with a timeout, where huggingface_hub would retry every file for
    half a minute. Behind a proxy the hub is not asked directly, so nothing is probed.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
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
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if os.path.isdir(model):
        return f"{model!r} is not a diffusers model folder ({text})."
    offline = os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True")
    if (
        unreachable
        or offline
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
