"""Zoom out and Pan: where a source image goes on a larger canvas, and the masks that say what
to paint and how the new paint blends into the source.

Plain geometry and numpy (no torch): the bot decides the canvas from these functions, the
engine builds the masks and blends the result with them. Every size and offset is a multiple
of 8, so the source lines up with the model's latent grid (8 pixels a cell).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# The zoom factors offered, by the name a button or select value carries.
ZOOMS: dict[str, float] = {"2": 2.0, "1.5": 1.5}
# Pan directions and the arrow each is shown with.
DIRECTIONS: dict[str, str] = {"left": "⬅️", "right": "➡️", "up": "⬆️", "down": "⬇️"}


@dataclass(frozen=True)
class Outpaint:
    """A canvas of `width` × `height` with the source at `paste` = (left, top, width, height),
    and a blend band `feather` pixels wide inside the source along every edge that touches new
    area."""

    width: int
    height: int
    paste: tuple[int, int, int, int]
    feather: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _multiple_of_8(value: float) -> int:
    return max(8, round(value / 8) * 8)


def feather_for(width: int, height: int) -> int:
    """The blend band for a source of this size: 1/16 of its shorter side, 8 px at least."""
    return max(8, min(width, height) // 16 // 8 * 8)


def zoom_out(width: int, height: int, factor: float) -> Outpaint:
    """The source in the middle of a canvas `factor` times its size."""
    if factor <= 1:
        raise ValueError(f"A zoom out needs a factor above 1 (got {factor}).")
    canvas_w, canvas_h = _multiple_of_8(width * factor), _multiple_of_8(height * factor)
    left = (canvas_w - width) // 2 // 8 * 8
    top = (canvas_h - height) // 2 // 8 * 8
    return Outpaint(canvas_w, canvas_h, (left, top, width, height), feather_for(width, height))


def pan(width: int, height: int, direction: str) -> Outpaint:
    """The canvas extended by half the source's size on one side."""
    if direction not in DIRECTIONS:
        raise ValueError(f"Unknown direction {direction!r}; use one of: {', '.join(DIRECTIONS)}.")
    feather = feather_for(width, height)
    if direction in ("left", "right"):
        extra = _multiple_of_8(width / 2)
        left = extra if direction == "left" else 0
        return Outpaint(width + extra, height, (left, 0, width, height), feather)
    extra = _multiple_of_8(height / 2)
    top = extra if direction == "up" else 0
    return Outpaint(width, height + extra, (0, top, width, height), feather)


def blend_mask(
    width: int, height: int, paste: tuple[int, int, int, int], feather: int
) -> npt.NDArray[np.float32]:
    """(height, width) weights of the new paint: 1 on the new area, 0 on the source, and a
    smooth ramp from 1 to 0 over `feather` pixels inside the source along each edge that
    borders new area (an edge on the canvas border needs no band)."""
    import numpy as np

    left, top, w, h = paste
    mask = np.ones((height, width), dtype=np.float32)
    inside = np.zeros((h, w), dtype=np.float32)
    if feather > 0:
        cols = np.arange(w, dtype=np.float32)
        rows = np.arange(h, dtype=np.float32)

        def ramp(distance: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            t = np.clip((feather - distance) / feather, 0.0, 1.0)
            return (t * t * (3 - 2 * t)).astype(np.float32)  # smoothstep: no kink at either end

        if left > 0:
            inside = np.maximum(inside, ramp(cols)[None, :])
        if left + w < width:
            inside = np.maximum(inside, ramp(cols[::-1].copy())[None, :])
        if top > 0:
            inside = np.maximum(inside, ramp(rows)[:, None])
        if top + h < height:
            inside = np.maximum(inside, ramp(rows[::-1].copy())[:, None])
    mask[top : top + h, left : left + w] = inside
    return mask


def paint_mask(blend: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """The inpainting pipeline's mask: 255 wherever any new paint goes (the band included)."""
    import numpy as np

    return np.where(blend > 0, 255, 0).astype(np.uint8)


def canvas_pixels(
    source: npt.NDArray[np.uint8], width: int, height: int, paste: tuple[int, int, int, int]
) -> npt.NDArray[np.uint8]:
    """The source (h, w, 3) on the canvas, the new area filled by repeating its edge pixels
    (a neutral start for the painter; at strength 1 it is replaced entirely)."""
    import numpy as np

    left, top, w, h = paste
    if source.shape[:2] != (h, w):
        raise ValueError(f"The source is {source.shape[1]}×{source.shape[0]}, not {w}×{h}.")
    pad = ((top, height - top - h), (left, width - left - w), (0, 0))
    return np.pad(source, pad, mode="edge")


def composite(
    canvas: npt.NDArray[np.float32],
    painted: npt.NDArray[np.float32],
    blend: npt.NDArray[np.float32],
) -> npt.NDArray[np.float32]:
    """The painted image where the mask says so, the source's own pixels elsewhere: outside the
    blend band the source is exactly what it was."""
    weights = blend[..., None]
    result: npt.NDArray[np.float32] = painted * weights + canvas * (1.0 - weights)
    return result
