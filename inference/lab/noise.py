"""Noise — the forward process: the picture encoded to latents, noised at increasing
timesteps with the model's own noise schedule (one fixed noise, from the image's seed) and
decoded. The road from picture to pure noise that the model learned to walk back; no UNet."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..engine import CancelCheck, JobCancelled, ProgressCallback
from ..request import GenerationRequest
from .draw import Cell, compose, fit
from .picture import LabPicture
from .replay import source_image

if TYPE_CHECKING:
    from .tools import LabTools


def noise_view(
    tools: LabTools,
    request: GenerationRequest,
    on_progress: ProgressCallback | None,
    cancelled: CancelCheck,
) -> LabPicture:
    import torch
    from diffusers import DDPMScheduler

    assert request.lab is not None
    picture = source_image(request)
    latents = tools.encode(picture)
    # The training schedule of this checkpoint (its betas), whatever sampler made the image.
    schedule = DDPMScheduler.from_config(tools.engine.pipe.scheduler.config)
    last = schedule.config.num_train_timesteps - 1
    frames = request.lab.frames
    timesteps = [round(i * last / (frames - 1)) for i in range(frames)]
    generator = torch.Generator("cpu").manual_seed(request.image_seeds()[0])
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    clean = latents.float().cpu().expand(frames, -1, -1, -1)
    noised = schedule.add_noise(
        clean, noise.expand(frames, -1, -1, -1), torch.tensor(timesteps, dtype=torch.long)
    )
    if request.job_id in set(cancelled()):
        raise JobCancelled()
    decoded = tools.decode_frames(noised)
    if on_progress is not None:
        on_progress(frames, frames)
    alphas = schedule.alphas_cumprod
    shares = [math.sqrt(max(0.0, 1 - float(alphas[t]))) for t in timesteps]
    original = tools.frame(picture)
    cells = [Cell(fit(original, 256, smallest=128), ("the picture", "", ""))]
    cells += [
        Cell(fit(frame, 256, smallest=128), (f"t = {t}", f"noise {round(share * 100)}%", ""))
        for frame, t, share in zip(decoded, timesteps, shares, strict=True)
    ]
    image, layout = compose(
        [cells], title="The forward process: noise added step by step (the model learns to undo it)"
    )
    data = {
        "timesteps": timesteps,
        "noise": [round(s, 4) for s in shares],
        "decoder": "tiny" if tools.frame_decoder is not None else "vae",
    }
    return LabPicture(
        image,
        layout,
        data=data,
        parts=[original, *decoded],
        part_names=["picture", *(f"t = {t}" for t in timesteps)],
    )
