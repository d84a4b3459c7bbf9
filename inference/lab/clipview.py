"""CLIP — how well image and words match: CLIP's cosine similarity of the prompt and the
image, against the line LAION-5B drew (it kept image–caption pairs at 0.28 or more), and the
phrases of a small vocabulary that CLIP finds closest to the image."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

from ..engine import CancelCheck, ProgressCallback
from ..request import GenerationRequest, RequestError
from .draw import BACKGROUND, INK, MUTED, PAD, Layout, fit, font, wrap
from .picture import LabPicture
from .replay import source_image
from .spec import LAION_THRESHOLD

if TYPE_CHECKING:
    from .tools import LabTools

GROUPS = ("medium", "style", "subject", "setting")
# What CLIP "sees" in a sentence: the best medium, subject and setting (style goes in the card).
SEES = ("medium", "subject", "setting")
PANEL = 380
BAR_TOP = 0.5  # the bar's right end: CLIP similarities of matching pairs sit around 0.3


def clip_view(
    tools: LabTools,
    request: GenerationRequest,
    on_progress: ProgressCallback | None,
    cancelled: CancelCheck,
) -> LabPicture:
    if tools.clip is None:
        raise RequestError(f"The CLIP view is off: {tools.clip_note}.")
    picture = source_image(request)
    similarity = tools.clip_similarity(request.prompt, [picture])[0]
    reading = tools.clip_reading(picture)
    if on_progress is not None:
        on_progress(1, 1)
    sees = [reading[g][0][0] for g in SEES if reading.get(g)]
    thumb = fit(tools.frame(picture), 256, smallest=192)
    card = draw_card(thumb, request.prompt, similarity, reading)
    layout = Layout(
        [
            {
                "row": 0,
                "col": 0,
                "box": [PAD, PAD, PAD + thumb.width, PAD + thumb.height],
                "label": ["the picture"],
            }
        ]
    )
    data = {
        "similarity": round(similarity, 4),
        "laion_threshold": LAION_THRESHOLD,
        "sees": sees,
        "phrases": {g: [[p, round(s, 4)] for p, s in reading.get(g, [])] for g in GROUPS},
        "model": tools.config.clip_model,
    }
    return LabPicture(card, layout, data=data, parts=[thumb], part_names=["picture"])


def draw_card(
    thumb: Image.Image, prompt: str, similarity: float, reading: dict[str, list[tuple[str, float]]]
) -> Image.Image:
    """The picture on the left; on the right the score on a bar with LAION's line, and what
    CLIP reads in the picture."""
    line = 18
    card = Image.new("RGB", (thumb.width + PANEL + 3 * PAD, max(thumb.height, 400)), BACKGROUND)
    card.paste(thumb, (PAD, PAD))
    draw = ImageDraw.Draw(card)
    x, y = thumb.width + 2 * PAD, PAD
    draw.text((x, y), "CLIP: how well prompt and image match", fill=INK, font=font(15))
    y += line + 2
    for text in wrap(f"“{prompt}”", PANEL, 13)[:2]:
        draw.text((x, y), text, fill=MUTED, font=font(13))
        y += line - 2
    y += 4
    bar_w, bar_h = PANEL - 10, 14
    draw.rectangle((x, y, x + bar_w, y + bar_h), outline=MUTED)
    filled = max(0.0, min(similarity, BAR_TOP)) / BAR_TOP
    colour = (90, 200, 120) if similarity >= LAION_THRESHOLD else (230, 120, 80)
    if filled > 0:
        draw.rectangle(
            (x + 1, y + 1, x + 1 + int((bar_w - 2) * filled), y + bar_h - 1), fill=colour
        )
    mark = x + int(bar_w * LAION_THRESHOLD / BAR_TOP)
    draw.line((mark, y - 4, mark, y + bar_h + 4), fill=INK, width=2)
    y += bar_h + 6
    draw.text(
        (x, y),
        f"{similarity:.2f}   |  LAION-5B line {LAION_THRESHOLD:.2f}",
        fill=INK,
        font=font(14),
    )
    y += line + 6
    draw.text((x, y), "CLIP sees (closest phrases):", fill=INK, font=font(14))
    y += line
    for group in GROUPS:
        ranked = reading.get(group, [])
        if not ranked:
            continue
        text = f"{group}: " + ", ".join(f"{p} {s:.2f}" for p, s in ranked)
        for part in wrap(text, PANEL, 13)[:2]:
            draw.text((x, y), part, fill=MUTED, font=font(13))
            y += line - 2
        y += 2
    return card.crop((0, 0, card.width, max(thumb.height + 2 * PAD, y + PAD)))
