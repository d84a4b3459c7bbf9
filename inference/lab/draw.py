"""Drawing the lab's pictures with Pillow: labelled grids, heat maps, PNGs that carry their
layout (so a cell can be cut out again) and animated WebP films."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Pixels = npt.NDArray[np.float32]
    # (H, W, 3) bytes, as the engine hands a result's pixels over.
    Bytes = npt.NDArray[np.uint8]

BACKGROUND = (24, 24, 32)
INK = (235, 235, 240)
MUTED = (170, 170, 185)
PAD = 6
FontT = ImageFont.FreeTypeFont | ImageFont.ImageFont


@cache
def font(size: int = 14) -> FontT:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def to_image(pixels: Pixels | Bytes | Image.Image) -> Image.Image:
    """(H, W, 3) floats in [0, 1] (or bytes) as an RGB image."""
    if isinstance(pixels, Image.Image):
        return pixels.convert("RGB")
    import numpy as np

    if pixels.dtype == np.uint8:
        return Image.fromarray(pixels, "RGB")
    return Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255).round().astype("uint8"), "RGB")


def fit(image: Image.Image, side: int, *, smallest: int = 0) -> Image.Image:
    """Shrink so the longer side is at most `side`; a picture shorter than `smallest` is
    enlarged by a whole factor with square pixels (the class sees the latent's real grain,
    and the cell can be cut out and shrunk back exactly)."""
    longest = max(image.size)
    if smallest and longest < smallest:
        factor = -(-smallest // longest)
        return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    if longest <= side:
        return image
    scale = side / longest
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def text_width(text: str, size: int = 14) -> int:
    left, _, right, _ = font(size).getbbox(text)
    return int(right - left)


def wrap(text: str, width: int, size: int = 14) -> list[str]:
    """Greedy word wrap to `width` pixels."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_width(f"{lines[-1]} {word}", size) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


@dataclass
class Cell:
    image: Image.Image
    label: Sequence[str] = ()  # lines under the cell
    meta: dict[str, Any] = field(default_factory=dict)  # kept in the layout


@dataclass
class Layout:
    """Where each cell of a composed picture is, as saved in its PNG (`easel-lab` chunk)."""

    cells: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"cells": self.cells}, sort_keys=True)


def compose(
    rows: Sequence[Sequence[Cell]],
    *,
    title: str = "",
    row_titles: Sequence[str] = (),
    column_titles: Sequence[str] = (),
    size: int = 14,
) -> tuple[Image.Image, Layout]:
    """Cells in a grid, each with its lines of label under it; optional titles on top, on the
    left of each row and above each column."""
    line = size + 4
    cols = max(len(r) for r in rows)
    cell_w = max(c.image.width for r in rows for c in r)
    cell_h = max(c.image.height for r in rows for c in r)
    # Each row is as tall as its cells and its own lines of label (a row without labels
    # leaves no gap).
    row_h = [cell_h + max((len(c.label) for c in r), default=0) * line + PAD for r in rows]
    left = 0
    if row_titles:
        left = min(160, max(text_width(w, size) for t in row_titles for w in t.split()) + 2 * PAD)
        left = max(left, 90)
    head = line + PAD if title else 0
    col_head = line + PAD if column_titles else 0
    step_w = cell_w + PAD
    width = left + PAD + cols * step_w
    height = head + col_head + PAD + sum(row_h)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    face = font(size)
    if title:
        draw.text((PAD, PAD // 2), title, fill=INK, font=face)
    for c, name in enumerate(column_titles):
        x = left + PAD + c * step_w
        draw.text((x, head + PAD // 2), _clip_text(name, cell_w, size), fill=INK, font=face)
    layout = Layout()
    for r, row in enumerate(rows):
        y = head + col_head + PAD + sum(row_h[:r])
        if r < len(row_titles):
            for k, text in enumerate(wrap(row_titles[r], left - 2 * PAD, size)):
                draw.text((PAD, y + k * line), text, fill=INK, font=face)
        for c, cell in enumerate(row):
            x = left + PAD + c * step_w
            canvas.paste(cell.image, (x, y))
            box = [x, y, x + cell.image.width, y + cell.image.height]
            for k, text in enumerate(cell.label):
                colour = INK if k == 0 else MUTED
                draw.text(
                    (x, y + cell.image.height + 2 + k * line),
                    _clip_text(text, cell_w, size),
                    fill=colour,
                    font=face,
                )
            layout.cells.append({"row": r, "col": c, "box": box, "label": list(cell.label)})
            layout.cells[-1].update(cell.meta)
    return canvas, layout


def _clip_text(text: str, width: int, size: int) -> str:
    if text_width(text, size) <= width:
        return text
    while text and text_width(text + "…", size) > width:
        text = text[:-1]
    return text + "…"


def png(image: Image.Image, chunks: dict[str, str]) -> bytes:
    """PNG bytes with text chunks (the recipe, the layout)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    # Fast compression: encoding runs in the worker, where CPU time is GPU time lost.
    image.save(buffer, format="PNG", pnginfo=info, compress_level=1)
    return buffer.getvalue()


def webp_film(frames: Sequence[Image.Image], *, ms: int = 450, hold_last: int = 1500) -> bytes:
    """An animated, looping WebP; lossless, so every frame is exactly the one in the grid."""
    buffer = io.BytesIO()
    durations = [ms] * (len(frames) - 1) + [hold_last]
    frames[0].save(
        buffer,
        format="WEBP",
        save_all=True,
        append_images=list(frames[1:]),
        duration=durations,
        loop=0,
        lossless=True,
        method=2,  # fast; lossless whatever the method
    )
    return buffer.getvalue()


# A perceptual "inferno"-like ramp: black → purple → orange → yellow.
_RAMP = (
    (0.00, (0, 0, 4)),
    (0.25, (87, 16, 110)),
    (0.50, (188, 55, 84)),
    (0.75, (249, 142, 9)),
    (1.00, (252, 255, 164)),
)


def heat_overlay(
    image: Image.Image, heat: npt.NDArray[np.float32], alpha: float = 0.6
) -> Image.Image:
    """`heat` (h, w) in [0, 1], scaled up to the image and blended over it in colour."""
    import numpy as np

    big = Image.fromarray((np.clip(heat, 0, 1) * 255).astype("uint8"), "L").resize(
        image.size, Image.Resampling.BICUBIC
    )
    level = np.asarray(big, dtype=np.float32) / 255.0
    rgb = np.zeros((*level.shape, 3), dtype=np.float32)
    for (a, ca), (b, cb) in itertools.pairwise(_RAMP):
        inside = (level >= a) & (level <= b)
        t = ((level - a) / (b - a))[inside][:, None]
        rgb[inside] = np.array(ca) * (1 - t) + np.array(cb) * t
    base = np.asarray(image.convert("L").convert("RGB"), dtype=np.float32)
    mixed = base * (1 - alpha) + rgb * alpha
    return Image.fromarray(mixed.clip(0, 255).astype("uint8"), "RGB")
