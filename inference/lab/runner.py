"""Running one lab job in the worker: the view, then the safety checker on every part of what
it shows, then the result (its picture as image 0, what it found as `LabOutput`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..engine import CancelCheck, JobCancelled, ProgressCallback
from ..request import GeneratedImage, GenerationRequest, GenerationResult, RequestError
from .clipview import clip_view
from .draw import png
from .grid import grid_view
from .noise import noise_view
from .picture import LabPicture
from .spec import LabOutput
from .steps import steps_view
from .words import words_view

if TYPE_CHECKING:
    from ..engine import Engine

View = Callable[..., LabPicture]
VIEWS: dict[str, View] = {
    "steps": steps_view,
    "words": words_view,
    "clip": clip_view,
    "noise": noise_view,
    "grid": grid_view,
}


def run_lab(
    engine: Engine,
    request: GenerationRequest,
    on_progress: ProgressCallback | None,
    cancelled: CancelCheck,
) -> GenerationResult:
    """One lab view of `request` (whose `lab` is set); never raises for a bad request."""
    assert request.lab is not None
    tools = engine.lab
    result = GenerationResult(
        job_id=request.job_id, prompt_truncated=engine.prompt_truncated(request.prompt)
    )
    if tools is None:
        result.error = "The lab is not loaded in this worker."
        return result
    started = time.perf_counter()
    try:
        picture = VIEWS[request.lab.view](tools, request, on_progress, cancelled)
    except JobCancelled:
        result.cancelled = True
        return result
    except RequestError as error:
        result.error = str(error)
        return result
    if request.job_id in set(cancelled()):
        result.cancelled = True
        return result
    # Nothing is posted that the checker has not seen: every frame or map, and the picture.
    checks = tools.check([*picture.parts, picture.image])
    names = [*picture.part_names, "the picture"]
    flagged_parts = [names[k] if k < len(names) else "" for k, (f, _) in enumerate(checks) if f]
    flagged = picture.flagged or bool(flagged_parts)
    scores = picture.scores
    if not scores:
        scores = next((s for f, s in checks if f), ())
    recipe = request.recipe()
    recipe.update(seed=request.image_seeds()[0], model=request.model or engine.config.model)
    chunks = {"easel": json.dumps(recipe, sort_keys=True), "easel-lab": picture.layout.to_json()}
    chunks.update(picture.chunks)
    data = dict(picture.data)
    if flagged_parts:
        data["flagged_parts"] = flagged_parts
    result.images = [
        GeneratedImage(
            png=png(picture.image, chunks),
            seed=request.image_seeds()[0],
            index=0,
            nsfw=flagged,
            width=picture.image.width,
            height=picture.image.height,
            safety_scores=scores if flagged else (),
        )
    ]
    result.lab = LabOutput(request.lab.view, data, list(picture.files))
    elapsed = time.perf_counter() - started
    result.timings = {"inference": elapsed, "batch": elapsed}
    return result
