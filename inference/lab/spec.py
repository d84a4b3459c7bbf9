"""The lab's half of the worker contract: what a lab job asks for and what it sends back.

Plain, pickle-safe dataclasses and parsing, no torch: the bot builds a `LabRequest` into a
`GenerationRequest` (its `lab` field), the worker answers with a `LabOutput` in the result.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

LabView = Literal["steps", "words", "clip", "noise", "grid"]
VIEWS: tuple[str, ...] = ("steps", "words", "clip", "noise", "grid")
# The views of one existing image (the 🔬 menu); the grid is made from a new prompt.
IMAGE_VIEWS: tuple[str, ...] = ("steps", "words", "clip", "noise")
AXES: tuple[str, ...] = ("seed", "guidance", "steps", "sampler")

# LAION-5B kept an image–caption pair when CLIP ViT-B/32 rated them at least this similar.
LAION_THRESHOLD = 0.28


class LabSpecError(ValueError):
    """A lab request that cannot run; the message is one sentence that says what to change."""


@dataclass(frozen=True)
class LabConfig:
    """How the worker runs lab views (part of `EngineConfig`, so pickle-safe)."""

    # diffusers AutoencoderTiny (hub id or folder, e.g. madebyollin/taesd) for film frames;
    # "auto" = the preview decoder, or TAESD for SD 1.x/2.x and SDXL; empty = the model's VAE.
    # Empty here (nothing fetched unasked); the bot's setting defaults to "auto".
    frame_decoder: str = ""
    # CLIP model (hub id or folder) for the CLIP view and the line in results; empty = off.
    clip_model: str = ""
    # Score every result's images with CLIP (a line in the result's embed).
    clip_in_results: bool = True
    # Longest side of one frame in the lab's pictures, in pixels.
    frame_side: int = 256
    # Most words the Words view maps.
    max_words: int = 12


@dataclass(frozen=True)
class LabRequest:
    """A lab view of a recipe. `image_ref` names the stored image the job reads from disk
    when it runs (generation id, image index): the picture the Noise and CLIP views look at,
    or the start image of an image-to-image recipe that Steps and Words replay."""

    view: LabView
    frames: int = 8
    image_ref: tuple[int, int] | None = None
    # Experiment grids: what varies across columns (and rows), as the member typed it
    # (validation rewrites it to a canonical list).
    axis: str = ""
    values: str = ""
    axis2: str = ""
    values2: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["image_ref"] = list(self.image_ref) if self.image_ref else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabRequest:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        ref = values.get("image_ref")
        values["image_ref"] = (int(ref[0]), int(ref[1])) if ref else None
        return cls(**values)

    @property
    def axes(self) -> list[tuple[str, str]]:
        """(axis, values text) across columns, then rows; empty axes left out."""
        return [(a, v) for a, v in ((self.axis, self.values), (self.axis2, self.values2)) if a]


@dataclass(frozen=True)
class LabFile:
    """An extra attachment of a lab result (e.g. the film as animated WebP). `name` is chosen
    by Easel's code, never by a member."""

    name: str
    data: bytes = field(repr=False)


@dataclass
class LabOutput:
    """What a lab view found: JSON-safe facts (for captions, /info and tests) and files."""

    view: str
    data: dict[str, Any] = field(default_factory=dict)
    files: list[LabFile] = field(default_factory=list)


@dataclass(frozen=True)
class ConceptScore:
    """One concept of the safety checker for one image: CLIP similarity, the concept's
    threshold, and the checker's score (similarity − threshold + adjustment, rounded as the
    checker rounds it); the image is flagged when a `concept` score is above 0."""

    group: Literal["special", "concept"]
    index: int
    similarity: float
    threshold: float
    score: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConceptScore:
        return cls(
            group="special" if data.get("group") == "special" else "concept",
            index=int(data["index"]),
            similarity=float(data["similarity"]),
            threshold=float(data["threshold"]),
            score=float(data["score"]),
        )


# --- experiment grids: parsing the values of an axis ------------------------------------------


@dataclass(frozen=True)
class Bounds:
    """The ranges an axis value must lie in (from the server's limits)."""

    min_steps: int
    max_steps: int
    min_guidance: float
    max_guidance: float
    max_seed: int
    samplers: Sequence[str]


def _numbers(text: str) -> list[str]:
    return [part for chunk in text.split(",") for part in chunk.split() if part]


def parse_axis(axis: str, text: str, bounds: Bounds) -> tuple[int | float | str, ...]:
    """The values of one axis, checked against `bounds` (LabSpecError with one sentence)."""
    axis = axis.strip().lower()
    if axis not in AXES:
        raise LabSpecError(f"Unknown axis {axis!r}; vary one of: {', '.join(AXES)}.")
    text = (text or "").strip()
    example = {"seed": "1, 2, 3", "guidance": "3, 7, 12", "steps": "10, 20, 30"}.get(
        axis, "Euler a, DDIM"
    )
    if not text:
        raise LabSpecError(f"Give the {axis} values, separated by commas, for example {example}.")
    if axis == "sampler":
        by_name = {name.lower(): name for name in bounds.samplers}
        names = [part.strip() for part in text.split(",") if part.strip()]
        for name in names:
            if name.lower() not in by_name:
                raise LabSpecError(
                    f"Unknown sampler {name!r}; choose from: {', '.join(bounds.samplers)}."
                )
        return tuple(by_name[name.lower()] for name in names)
    values: list[int | float] = []
    for part in _numbers(text):
        if axis == "guidance":
            try:
                number = float(part)
            except ValueError:
                raise LabSpecError(
                    f"{part!r} is not a number; give guidance values like {example}."
                ) from None
            if not math.isfinite(number) or not (
                bounds.min_guidance <= number <= bounds.max_guidance
            ):
                raise LabSpecError(
                    f"Guidance {part} is out of range; use {bounds.min_guidance:g} to "
                    f"{bounds.max_guidance:g}."
                )
            values.append(number)
            continue
        try:
            whole = int(part)
        except ValueError:
            raise LabSpecError(
                f"{part!r} is not a whole number; give {axis} values like {example}."
            ) from None
        low, high = (0, bounds.max_seed) if axis == "seed" else (bounds.min_steps, bounds.max_steps)
        if not low <= whole <= high:
            raise LabSpecError(f"{axis.capitalize()} {whole} is out of range; use {low} to {high}.")
        values.append(whole)
    return tuple(values)


def format_values(values: Sequence[int | float | str]) -> str:
    """The canonical text of an axis's values ("3, 7.5, 12")."""
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def axis_label(axis: str, value: int | float | str) -> str:
    """How a column or row is labelled: "seed 7", "guidance 7.5", "20 steps", "Euler a"."""
    if axis == "steps":
        return f"{value} steps"
    if axis == "sampler":
        return str(value)
    return f"{axis} {value:g}" if isinstance(value, float) else f"{axis} {value}"


def check_grid(lab: LabRequest, bounds: Bounds, max_cells: int) -> LabRequest:
    """A grid request with its axes parsed and checked, rewritten to canonical values."""
    if not lab.axis:
        raise LabSpecError(f"Name the axis to vary: one of {', '.join(AXES)}.")
    if lab.values2 and not lab.axis2:
        raise LabSpecError("You gave values2 without axis2; name the second axis to vary.")
    first = parse_axis(lab.axis, lab.values, bounds)
    second: tuple[int | float | str, ...] = ()
    axis2 = lab.axis2.strip().lower()
    if axis2:
        if axis2 == lab.axis.strip().lower():
            raise LabSpecError(
                f"Both axes are {axis2}; vary something else across the rows "
                f"({', '.join(a for a in AXES if a != axis2)})."
            )
        second = parse_axis(axis2, lab.values2, bounds)
    cells = len(first) * max(1, len(second))
    if cells > max_cells:
        shape = f"{len(first)} × {len(second)} = {cells}" if second else str(cells)
        raise LabSpecError(
            f"A grid of {shape} cells is too big; use at most {max_cells} cells in all."
        )
    return dataclasses.replace(
        lab,
        axis=lab.axis.strip().lower(),
        values=format_values(first),
        axis2=axis2,
        values2=format_values(second),
    )
