"""Steps — the denoising film: the recipe replayed, keeping at about evenly spaced steps the
latent the UNet was given ("what the model sees") and its prediction of the clean image
("what it predicts"), as one labelled grid and an animated WebP of the predictions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..engine import CancelCheck, ProgressCallback
from ..request import GenerationRequest
from .draw import Cell, compose, fit, webp_film
from .picture import LabPicture
from .replay import StepRecord, replay
from .spec import LabFile

if TYPE_CHECKING:
    from .tools import LabTools

FILM = "film.webp"
SMALLEST_CELL = 128  # tiny frames are enlarged in the grid so their labels fit


def pick(total: int, frames: int) -> list[int]:
    """About `frames` evenly spaced step indexes out of `total`, the first and last included."""
    if total <= frames:
        return list(range(total))
    return sorted({round(i * (total - 1) / (frames - 1)) for i in range(frames)})


def steps_view(
    tools: LabTools,
    request: GenerationRequest,
    on_progress: ProgressCallback | None,
    cancelled: CancelCheck,
) -> LabPicture:
    import torch

    assert request.lab is not None
    records: list[StepRecord] = []
    replay(tools, request, on_progress=on_progress, cancelled=cancelled, steps=records)
    chosen = [records[i] for i in pick(len(records), request.lab.frames)]
    seen = tools.decode_frames(torch.cat([r.model_input for r in chosen]))
    # The last prediction goes through the model's own VAE: it is the posted image.
    x0 = tools.decode_frames(torch.cat([r.x0 for r in chosen[:-1]])) if len(chosen) > 1 else []
    x0.append(tools.frame(tools.vae_decode(chosen[-1].x0)[0]))
    total = len(records)
    labels = [
        (f"step {r.index + 1} of {total}", f"t = {r.timestep}", f"noise {round(r.noise * 100)}%")
        for r in chosen
    ]
    rows = [
        [Cell(fit(image, 256, smallest=SMALLEST_CELL)) for image in seen],
        [
            Cell(fit(image, 256, smallest=SMALLEST_CELL), label)
            for image, label in zip(x0, labels, strict=True)
        ],
    ]
    seed = request.image_seeds()[0]
    picture, layout = compose(
        rows,
        title=f"Denoising film · {request.sampler} · {total} steps · seed {seed}",
        row_titles=("what the model sees", "what it predicts"),
    )
    data = {
        "steps": total,
        "sampler": request.sampler,
        "seed": seed,
        "decoder": "tiny" if tools.frame_decoder is not None else "vae",
        "frame_size": list(x0[0].size),
        "frames": [
            {"step": r.index + 1, "timestep": r.timestep, "noise": round(r.noise, 4)}
            for r in chosen
        ],
    }
    names = [f"seen {r.index + 1}" for r in chosen] + [f"predicted {r.index + 1}" for r in chosen]
    return LabPicture(
        picture,
        layout,
        data=data,
        files=[LabFile(FILM, webp_film(x0))],
        parts=[*seen, *x0],
        part_names=names,
    )
