"""Requests and results that cross the process boundary.

Everything here is a plain, pickle-safe dataclass: the bot builds a `GenerationRequest`, the
queue stores it, the worker process runs it and sends back a `GenerationResult` whose images
travel as PNG bytes. Nothing here imports torch or discord.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from .lab.spec import (
    Bounds,
    ConceptScore,
    LabOutput,
    LabRequest,
    LabSpecError,
    check_grid,
    parse_axis,
)

MAX_SEED = 2**32 - 1

Mode = Literal["txt2img", "img2img", "upscale", "outpaint"]
MODES: tuple[str, ...] = ("txt2img", "img2img", "upscale", "outpaint")

# An uploaded image keeps its shape up to this ratio of its longer to its shorter side.
MAX_UPLOAD_RATIO = 4.0

# Width:height of each aspect preset; the area stays close to the model's native square.
ASPECTS: dict[str, tuple[int, int]] = {
    "square": (1, 1),
    "portrait": (2, 3),
    "landscape": (3, 2),
    "wide": (16, 9),
    "tall": (9, 16),
}

# Sampler names users see, in the order they are offered.
SAMPLERS: tuple[str, ...] = (
    "DPM++ 2M",
    "DPM++ 2M Karras",
    "Euler",
    "Euler a",
    "DDIM",
    "LCM",
)


class RequestError(ValueError):
    """A request that cannot run; the message is one sentence that says what to change."""


@dataclass(frozen=True)
class Limits:
    """The bounds a request is validated against (built from the settings)."""

    max_prompt_chars: int = 1000
    min_steps: int = 1
    max_steps: int = 50
    min_guidance: float = 0.0
    max_guidance: float = 20.0
    max_count: int = 4
    max_pixels: int = 1024 * 1024
    samplers: tuple[str, ...] = SAMPLERS
    max_grid_cells: int = 16


@dataclass
class GenerationRequest:
    """One job: `count` images of one recipe. Image i uses seed `seed + i` (mod 2³²)."""

    prompt: str
    negative: str = ""
    seed: int | None = None
    steps: int = 25
    guidance: float = 7.0
    width: int = 512
    height: int = 512
    count: int = 1
    sampler: str = "DPM++ 2M Karras"
    mode: Mode = "txt2img"
    # Source image for img2img / upscale / outpaint, as PNG bytes, and how far to move away
    # from it.
    init_image: bytes | None = None
    strength: float = 0.6
    model: str = ""
    job_id: str = ""
    # What an image-to-image request started from, as people read it: "upload" or "#12 image 1".
    source: str = ""
    # Outpaint (zoom out, pan): where the source sits on the width × height canvas
    # (left, top, width, height), and the width in pixels of the band inside it where the
    # new paint blends into the source (outside the band the source's pixels are kept).
    paste: tuple[int, int, int, int] | None = None
    feather: int = 0
    # A lab view of this recipe (inference/lab/); None for a plain generation.
    lab: LabRequest | None = None

    def with_seed(self) -> GenerationRequest:
        """A copy whose seed is fixed (a random one if none was given)."""
        if self.seed is not None:
            return self
        return dataclasses.replace(self, seed=random.randint(0, MAX_SEED))

    def image_seeds(self) -> list[int]:
        """The seed of each image of this request."""
        if self.seed is None:
            raise RequestError("The request has no seed yet; call with_seed() first.")
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.count)]

    @property
    def steps_run(self) -> int:
        """Denoising steps the pipeline really runs (img2img runs the last `strength` part)."""
        if self.mode != "txt2img":
            return max(1, int(self.steps * self.strength))
        return self.steps

    @property
    def cost(self) -> int:
        """What this job costs the GPU, for fair scheduling: pixels × steps × images."""
        if self.lab is not None:
            return self._lab_cost(self.lab)
        return self.width * self.height * self.steps_run * self.count

    def _lab_cost(self, lab: LabRequest) -> int:
        # In the same units: a lab view replays one image, plus its frame decodes (about
        # two steps' worth); Noise and CLIP run no UNet; a grid costs the sum of its cells.
        pixels = self.width * self.height
        if lab.view == "grid":
            return sum(cell.cost for row in self.grid_cells() for cell in row)
        if lab.view == "steps":
            return pixels * (self.steps_run + 2)
        if lab.view == "words":
            return pixels * self.steps_run
        return pixels * (2 if lab.view == "noise" else 1)

    @property
    def needs_image(self) -> bool:
        """The job works from a stored image (`init_image`, read from disk when missing)."""
        return self.mode != "txt2img" or (self.lab is not None and self.lab.image_ref is not None)

    def grid_cells(self) -> list[list[GenerationRequest]]:
        """An experiment grid's cells, row by row: this recipe with the axes' values."""
        lab = self.lab
        if lab is None or lab.view != "grid":
            return []
        bounds = Bounds(1, 10**6, -(10.0**6), 10.0**6, MAX_SEED, SAMPLERS)  # checked before
        axes = [(axis, parse_axis(axis, text, bounds)) for axis, text in lab.axes]
        columns = axes[0] if axes else ("seed", (self.seed,))
        rows = axes[1] if len(axes) > 1 else ("", (None,))
        base = dataclasses.replace(self, lab=None, count=1)
        grid = []
        for row_value in rows[1]:
            row = []
            for column_value in columns[1]:
                values: dict[str, Any] = {columns[0]: column_value}
                if rows[0]:
                    values[rows[0]] = row_value
                row.append(dataclasses.replace(base, **values))
            grid.append(row)
        return grid

    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys may share one pipeline call."""
        if self.lab is not None:
            return ("lab", self.job_id)  # a lab view runs alone
        if self.mode != "txt2img":
            # Each source image is its own call; never batch them with others.
            return (self.mode, self.job_id)
        return (
            self.model,
            self.mode,
            self.width,
            self.height,
            self.steps,
            self.sampler,
            round(self.guidance, 4),
        )

    def recipe(self) -> dict[str, Any]:
        """Everything needed to reproduce the request (no image bytes)."""
        data = dataclasses.asdict(self)
        data.pop("init_image")
        data.pop("job_id")
        if self.mode == "txt2img":
            data.pop("strength")
        # Left out when unused, so older recipes (and their PNGs) stay exactly as they were.
        if not self.source:
            data.pop("source")
        if self.paste is None:
            data.pop("paste")
            data.pop("feather")
        else:
            data["paste"] = list(self.paste)
        if self.lab is None:
            data.pop("lab")
        else:
            data["lab"] = self.lab.to_dict()
        return data

    def to_json(self) -> str:
        """The request as JSON (the source image is left out; it lives as a file)."""
        return json.dumps(self.recipe(), sort_keys=True)

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], **overrides: Any) -> GenerationRequest:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in recipe.items() if k in known}
        if isinstance(values.get("lab"), dict):
            values["lab"] = LabRequest.from_dict(values["lab"])
        values.update(overrides)
        if values.get("paste") is not None:
            values["paste"] = tuple(int(v) for v in values["paste"])
        return cls(**values)


@dataclass
class GeneratedImage:
    """One image of a result: PNG bytes (never redacted) and whether the checker flagged it.

    The worker leaves the PNG encoding to the bot, off the GPU's path: then `png` is empty and
    `raw` holds the pixels (height × width × 3 RGB bytes) and `recipe` the PNG's text chunks,
    until `inference.engine.encode_pngs` fills `png`.
    """

    png: bytes
    seed: int
    index: int
    nsfw: bool = False
    width: int = 0
    height: int = 0
    # CLIP's cosine similarity of prompt and image (when the lab's CLIP model is loaded).
    clip_score: float | None = None
    # The safety checker's per-concept scores, kept for flagged images (why it was flagged).
    safety_scores: tuple[ConceptScore, ...] = ()
    raw: bytes | None = None
    recipe: dict[str, Any] | None = None


@dataclass
class GenerationResult:
    """What the worker sends back for one request."""

    job_id: str
    images: list[GeneratedImage] = field(default_factory=list)
    error: str | None = None
    cancelled: bool = False
    prompt_truncated: bool = False
    # Seconds: "inference" is the job's share of its pipeline call; "batch" the whole call.
    timings: dict[str, float] = field(default_factory=dict)
    batch_size: int = 1
    attempts: int = 1
    # What a lab view found (its picture is `images[0]`); None for a plain generation.
    lab: LabOutput | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cancelled

    @property
    def any_flagged(self) -> bool:
        return any(image.nsfw for image in self.images)


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be a whole number between {low} and {high}.")
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {low} and {high} (got {value}).")
    return value


def validate(request: GenerationRequest, limits: Limits) -> GenerationRequest:
    """Check a request against the limits; raise `RequestError` with one clear sentence."""
    prompt = (request.prompt or "").strip()
    if not prompt:
        raise RequestError("The prompt is empty; describe the image you want.")
    if len(prompt) > limits.max_prompt_chars:
        raise RequestError(
            f"The prompt is {len(prompt)} characters long; keep it under "
            f"{limits.max_prompt_chars + 1}."
        )
    if len(request.negative or "") > limits.max_prompt_chars:
        raise RequestError(
            f"The negative prompt is too long; keep it under {limits.max_prompt_chars + 1} "
            "characters."
        )
    _check_int("steps", request.steps, limits.min_steps, limits.max_steps)
    if isinstance(request.guidance, bool) or not isinstance(request.guidance, (int, float)):
        raise RequestError("guidance must be a number.")
    if not limits.min_guidance <= request.guidance <= limits.max_guidance:
        raise RequestError(
            f"guidance must be between {limits.min_guidance:g} and {limits.max_guidance:g} "
            f"(got {request.guidance:g})."
        )
    _check_int("count", request.count, 1, limits.max_count)
    if request.seed is not None:
        _check_int("seed", request.seed, 0, MAX_SEED)
    if request.sampler not in limits.samplers:
        raise RequestError(
            f"Unknown sampler {request.sampler!r}; choose one of: {', '.join(limits.samplers)}."
        )
    for name, value in (("width", request.width), ("height", request.height)):
        _check_int(name, value, 8, 16384)
        if value % 8:
            raise RequestError(f"{name} must be a multiple of 8 (got {value}).")
    pixels = request.width * request.height
    if pixels > limits.max_pixels:
        raise RequestError(
            f"{request.width}×{request.height} is too large; keep width × height at or under "
            f"{limits.max_pixels} pixels."
        )
    if request.mode not in MODES:
        raise RequestError(f"Unknown mode {request.mode!r}; use one of: {', '.join(MODES)}.")
    if request.lab is not None:
        request = _validate_lab(request, limits)
    if request.mode != "txt2img":
        if not request.init_image:
            raise RequestError(f"A {request.mode} request needs a source image.")
        if not 0.0 < request.strength <= 1.0:
            raise RequestError(f"strength must be above 0 and at most 1 (got {request.strength}).")
        if int(request.steps * request.strength) < 1:
            needed = math.ceil(1 / request.strength)
            raise RequestError(
                f"{request.steps} step(s) at strength {request.strength:g} leave nothing to do; "
                f"use at least {needed} steps."
            )
    if request.mode == "outpaint":
        _check_paste(request)
    return dataclasses.replace(request, prompt=prompt, negative=(request.negative or "").strip())


def _check_paste(request: GenerationRequest) -> None:
    """An outpaint's source must lie inside its canvas, which it must not fill."""
    paste = request.paste
    if paste is None or len(paste) != 4:
        raise RequestError("A zoom or pan needs the place of its source on the canvas.")
    left, top, width, height = paste
    inside = (
        left >= 0
        and top >= 0
        and width > 0
        and height > 0
        and left + width <= request.width
        and top + height <= request.height
    )
    if not inside:
        raise RequestError(
            f"A zoom or pan of a {width}×{height} image cannot be {request.width}×"
            f"{request.height}; its size follows from its source, so leave out aspect."
        )
    if (width, height) == (request.width, request.height):
        raise RequestError("A zoom or pan needs a canvas larger than its source.")
    if request.feather < 0:
        raise RequestError(f"feather must be 0 or more (got {request.feather}).")


def fit_size(
    width: int, height: int, native: int, max_pixels: int, max_ratio: float = MAX_UPLOAD_RATIO
) -> tuple[int, int]:
    """The model's size for an image of `width` × `height`: the same shape (up to
    `max_ratio`:1), an area of about `native`², both sides multiples of 8, within `max_pixels`."""
    if width < 1 or height < 1:
        raise RequestError("An image needs a width and a height.")
    ratio = min(max(width / height, 1 / max_ratio), max_ratio)
    area = min(native * native, max_pixels)
    new_width = max(8, int((area * ratio) ** 0.5) // 8 * 8)
    new_height = max(8, int((area / ratio) ** 0.5) // 8 * 8)
    while new_width * new_height > max_pixels and min(new_width, new_height) > 8:
        if new_width >= new_height:
            new_width -= 8
        else:
            new_height -= 8
    return new_width, new_height


def _validate_lab(request: GenerationRequest, limits: Limits) -> GenerationRequest:
    lab = request.lab
    assert lab is not None
    if lab.view not in ("steps", "words", "clip", "noise", "grid"):
        raise RequestError(f"Unknown lab view {lab.view!r}.")
    if request.count != 1:
        raise RequestError("A lab view looks at one image at a time.")
    if lab.view in ("clip", "noise") and not (request.init_image or lab.image_ref):
        raise RequestError(f"The {lab.view} view needs the image it looks at.")
    if not 2 <= lab.frames <= 16:
        raise RequestError(f"frames must be between 2 and 16 (got {lab.frames}).")
    if lab.view != "grid":
        return request
    bounds = Bounds(
        limits.min_steps,
        limits.max_steps,
        limits.min_guidance,
        limits.max_guidance,
        MAX_SEED,
        limits.samplers,
    )
    try:
        checked = check_grid(lab, bounds, limits.max_grid_cells)
    except LabSpecError as error:
        raise RequestError(str(error)) from None
    return dataclasses.replace(request, lab=checked)


def aspect_size(aspect: str, native: int) -> tuple[int, int]:
    """Width and height of an aspect preset for a model whose native square is `native` px.

    The area stays at or under native², both sides are multiples of 8.
    """
    if aspect not in ASPECTS:
        raise RequestError(f"Unknown aspect {aspect!r}; choose one of: {', '.join(ASPECTS)}.")
    w_ratio, h_ratio = ASPECTS[aspect]
    scale = (native * native / (w_ratio * h_ratio)) ** 0.5
    width = max(8, int(w_ratio * scale) // 8 * 8)
    height = max(8, int(h_ratio * scale) // 8 * 8)
    return width, height
