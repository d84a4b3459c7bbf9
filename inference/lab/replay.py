"""Replaying a stored recipe on the engine's pipeline, exactly as the engine made it (same
prompt list, one CPU generator per image, the same scheduler), with hooks: a scheduler whose
`step` reports each step, and attention processors that watch the cross-attention."""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..engine import CancelCheck, JobCancelled, ProgressCallback
from ..request import GenerationRequest, RequestError

if TYPE_CHECKING:
    import torch

    from .tools import LabTools


@dataclass
class StepRecord:
    """One denoising step: the latent the UNet was given, its clean-image prediction (x0),
    the timestep and the share of noise in the latent at that step."""

    index: int
    timestep: int
    noise: float
    model_input: torch.Tensor  # (1, 4, h, w), UNet space, on the CPU
    x0: torch.Tensor


def _noise_share(scheduler: Any, timestep: int) -> float:
    """σ / √(1 + σ²): how much of the latent is noise (1 = pure noise)."""
    sigmas = getattr(scheduler, "sigmas", None)
    index = getattr(scheduler, "step_index", None)
    if sigmas is not None and index is not None and index < len(sigmas):
        sigma = float(sigmas[index])
        return sigma / math.sqrt(1 + sigma * sigma)
    alpha = float(scheduler.alphas_cumprod[int(timestep)])
    return math.sqrt(max(0.0, 1 - alpha))


def _x0_from_noise(scheduler: Any, model_output: Any, timestep: Any, sample: Any) -> Any:
    """The clean latent implied by a noise prediction, for schedulers that do not give it."""
    convert = getattr(scheduler, "convert_model_output", None)
    algorithm = getattr(scheduler.config, "algorithm_type", "")
    if convert is not None and algorithm in ("dpmsolver++", "sde-dpmsolver++"):
        return convert(model_output, sample=sample)  # DPM-Solver++ works on x0 itself
    alpha = scheduler.alphas_cumprod[int(timestep)].to(sample.device, sample.dtype)
    if scheduler.config.prediction_type == "v_prediction":
        return alpha.sqrt() * sample - (1 - alpha).sqrt() * model_output
    return (sample - (1 - alpha).sqrt() * model_output) / alpha.sqrt()


def record_steps(scheduler: Any, records: list[StepRecord]) -> None:
    """Wrap `scheduler.step` so every step appends a `StepRecord` (the scheduler's own
    `pred_original_sample` / `denoised` where it gives one, else computed from the noise
    prediction). The wrapper keeps `step`'s signature: the pipeline inspects it to pass
    `generator` (Euler a's noise) and `eta`."""
    original = scheduler.step

    @functools.wraps(original)
    def step(model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
        want_dict = kwargs.pop("return_dict", True)
        if getattr(scheduler, "step_index", 0) is None:
            scheduler._init_step_index(timestep)  # what step() does first; it is idempotent
        t = int(timestep)
        noise = _noise_share(scheduler, t)
        model_input = scheduler.scale_model_input(sample, timestep)
        # DPM-Solver++ gives no x0 in its output; work it out before step() moves on.
        computed = None
        if hasattr(scheduler, "convert_model_output"):
            computed = _x0_from_noise(scheduler, model_output, timestep, sample)
        output = original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
        x0 = getattr(output, "pred_original_sample", None)
        if x0 is None:
            x0 = getattr(output, "denoised", None)
        if x0 is None:
            x0 = computed
        if x0 is None:
            x0 = _x0_from_noise(scheduler, model_output, timestep, sample)
        records.append(
            StepRecord(
                len(records),
                t,
                noise,
                model_input.detach().float().cpu().clone(),
                x0.detach().float().cpu().clone(),
            )
        )
        return output if want_dict else output.to_tuple()

    scheduler.step = step


def source_image(request: GenerationRequest) -> Any:
    """The request's stored image as an RGB picture at the recipe's size."""
    from PIL import Image

    if request.init_image is None:
        raise RequestError("This lab view needs the image it looks at.")
    image = Image.open(io.BytesIO(request.init_image)).convert("RGB")
    if image.size != (request.width, request.height):
        image = image.resize((request.width, request.height), Image.Resampling.LANCZOS)
    return image


def replay(
    tools: LabTools,
    request: GenerationRequest,
    *,
    on_progress: ProgressCallback | None,
    cancelled: CancelCheck,
    steps: list[StepRecord] | None = None,
    processors: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Run the recipe's one image again and return its final latents (1, 4, h, w)."""
    import torch

    from ..samplers import make_scheduler

    engine = tools.engine
    if request.mode == "upscale" and engine.config.upscaler:
        raise RequestError("The lab cannot replay an image made by the latent upscaler.")
    seed = request.image_seeds()[0]
    scheduler = make_scheduler(request.sampler, engine.pipe.scheduler.config)
    if steps is not None:
        record_steps(scheduler, steps)
    unet = engine.pipe.unet
    before = dict(unet.attn_processors) if processors else None

    def step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if request.job_id in set(cancelled()):
            raise JobCancelled()
        if on_progress is not None:
            on_progress(step + 1, getattr(pipe, "num_timesteps", None) or request.steps_run)
        return kwargs

    common: dict[str, Any] = dict(
        prompt=[request.prompt],
        negative_prompt=[request.negative] if request.negative else None,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        generator=[torch.Generator("cpu").manual_seed(seed)],
        output_type="latent",
        callback_on_step_end=step_end,
    )
    try:
        if processors:
            unet.set_attn_processor({**before, **processors} if before else processors)
        with torch.inference_mode():
            if request.mode == "txt2img":
                engine.pipe.scheduler = scheduler
                out = engine.pipe(width=request.width, height=request.height, **common)
            else:
                pipe = tools.img2img
                pipe.scheduler = scheduler
                out = pipe(image=[source_image(request)], strength=request.strength, **common)
    finally:
        if before is not None:
            unet.set_attn_processor(before)
    latents: torch.Tensor = out.images
    return latents
