"""What a result looks like in Discord: the recipe embed, the files and the status lines."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import discord

from inference.request import GenerationRequest

from .store import Generation, ImageRow

EMBED_COLOUR = discord.Colour(0x6C5CE7)
# How a generation's status reads in lists (history, the moderators' log).
STATUS_MARKS = {
    "queued": "⏳ queued",
    "running": "⚙️ running",
    "done": "✅ done",
    "failed": "❌ failed",
    "cancelled": "✖️ cancelled",
    "blocked": "⛔ refused",
}
KIND_VERBS = {
    "imagine": "",
    "reroll": "reroll",
    "remix": "remix",
    "vary": "variation",
    "upscale": "upscale",
}


def clip(text: str, limit: int) -> str:
    """Shorten text to Discord's field limits, marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quote(text: str) -> str:
    """A prompt as inline text that cannot break out of its formatting."""
    return text.replace("`", "ˋ").replace("\n", " ")


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    return f"{math.ceil(seconds / 60)} min"


def jump_url(guild_id: int | None, channel_id: int | None, message_id: int | None) -> str | None:
    if not channel_id or not message_id:
        return None
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


def lineage_line(generation: Generation, parent: Generation | None) -> str | None:
    """ "remix of #N by @author" for anything made from another image."""
    if parent is None:
        return None
    verb = KIND_VERBS.get(generation.kind) or "remix"
    which = ""
    if generation.parent_image_index is not None and generation.kind in ("vary", "upscale"):
        which = f" (image {generation.parent_image_index + 1})"
    return f"{verb} of #{parent.id}{which} by <@{parent.user_id}>"


def recipe_embed(
    generation: Generation,
    parent: Generation | None = None,
    *,
    model: str = "",
    images: Sequence[ImageRow] = (),
) -> discord.Embed:
    """The full recipe: everything needed to reproduce the images, and where they came from."""
    request = generation.request
    embed = discord.Embed(
        title=f"#{generation.id}",
        description=clip(request.prompt, 4000),
        colour=EMBED_COLOUR,
    )
    if request.negative:
        embed.add_field(name="Negative", value=clip(request.negative, 1024), inline=False)
    seeds = [image.seed for image in images] or generation.seeds
    embed.add_field(
        name="Seed" if len(seeds) == 1 else "Seeds",
        value=", ".join(str(s) for s in seeds) or "random",
    )
    embed.add_field(name="Steps", value=str(request.steps))
    embed.add_field(name="Guidance", value=f"{request.guidance:g}")
    embed.add_field(name="Size", value=f"{request.width}×{request.height}")
    embed.add_field(name="Sampler", value=request.sampler)
    if request.mode != "txt2img":
        embed.add_field(name="Strength", value=f"{request.strength:g}")
    embed.add_field(
        name="Model", value=clip(request.model or model or "default", 1024), inline=False
    )
    line = lineage_line(generation, parent)
    if line:
        embed.add_field(name="Made from", value=line, inline=False)
    if generation.prompt_truncated:
        embed.add_field(
            name="Note",
            inline=False,
            value="The prompt is longer than the model's 77 tokens; only its first part was used.",
        )
    by = generation.user_name or str(generation.user_id)
    footer = f"by {by}"
    if generation.inference_seconds:
        footer += f" · made in {generation.inference_seconds:.1f} s"
    embed.set_footer(text=footer)
    return embed


def fit_embed(embed: discord.Embed, limit: int = 6000) -> discord.Embed:
    """Shorten the longest field until the embed fits Discord's total size."""
    while len(embed) > limit and embed.fields:
        index, field = max(enumerate(embed.fields), key=lambda pair: len(pair[1].value))
        if len(field.value) <= 64:
            break
        embed.set_field_at(
            index,
            name=field.name,
            value=clip(field.value, len(field.value) // 2),
            inline=field.inline,
        )
    if len(embed) > limit and embed.description:
        embed.description = clip(
            embed.description, max(100, len(embed.description) - (len(embed) - limit))
        )
    return embed


def status_text(request: GenerationRequest, generation_id: int, state: str) -> str:
    """The author's private status line for a job."""
    return f"**#{generation_id}** `{clip(quote(request.prompt), 80)}` — {state}"


def fit_files(pngs: Sequence[tuple[str, bytes, bool]], limit: int) -> list[discord.File]:
    """(name, PNG, spoiler) as attachments that fit Discord's upload limit together.

    Over the limit, every image is downscaled step by step; the recipe chunks are kept.
    Slow for big images: call it in a thread.
    """
    budget = int(limit * 0.95)  # room for the multipart envelope
    blobs = [data for _, data, _ in pngs]
    scale = 1.0
    while sum(len(b) for b in blobs) > budget and scale > 0.1:
        scale *= 0.75
        blobs = [_downscale(data, scale) for _, data, _ in pngs]
    return [
        discord.File(io.BytesIO(data), filename=name, spoiler=spoiler)
        for (name, _, spoiler), data in zip(pngs, blobs, strict=True)
    ]


def _downscale(png: bytes, scale: float) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    with Image.open(io.BytesIO(png)) as image:
        info = PngInfo()
        for key, value in getattr(image, "text", {}).items():
            info.add_text(key, value)
        size = (max(8, int(image.width * scale)), max(8, int(image.height * scale)))
        small = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True, pnginfo=info)
    return out.getvalue()
