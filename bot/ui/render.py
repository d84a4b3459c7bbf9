"""What a result looks like in Discord: the recipe embed, the files and the status lines."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import discord

from bot.domain import Generation, ImageRow, Kind, Status, plural
from bot.queue import WorkerInfo
from bot.text import clip, literal, plain, user
from inference.backend import WorkerState
from inference.request import GenerationRequest

EMBED_COLOUR = discord.Colour(0x6C5CE7)


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


def uploaded_by(generation: Generation) -> str:
    """ "an image uploaded by @member": the root of a family tree that started from an upload."""
    return f"an image uploaded by {user(generation.user_id)}"


def lineage_line(generation: Generation, parent: Generation | None) -> str | None:
    """ "remix of #N by @author" for anything made from another image; "from an image
    uploaded by @member" for a job that started from an upload."""
    if parent is None:
        return f"from {uploaded_by(generation)}" if generation.has_upload else None
    noun = generation.kind.label if generation.kind is not Kind.IMAGINE else Kind.REMIX.label
    which = ""
    if generation.parent_image_index is not None and generation.kind.from_one_image:
        which = f" (image {generation.parent_image_index + 1})"
    return f"{noun} of #{parent.id}{which} by {user(parent.user_id)}"


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
        description=literal(request.prompt, 4000, inline=False),
        colour=EMBED_COLOUR,
    )
    if request.negative:
        embed.add_field(
            name="Negative", value=literal(request.negative, 1024, inline=False), inline=False
        )
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
    if request.paste is not None:
        embed.add_field(name="Canvas", value=outpaint_geometry(request), inline=False)
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
    by = plain(generation.user_name or str(generation.user_id))
    footer = f"by {by}"
    if generation.inference_seconds:
        footer += f" · made in {generation.inference_seconds:.1f} s"
    embed.set_footer(text=footer)
    return embed


def outpaint_geometry(request: GenerationRequest) -> str:
    """Where a zoom's or pan's source sits on its canvas, and the blend band."""
    assert request.paste is not None
    left, top, width, height = request.paste
    source = f"{request.source} " if request.source else "the source "
    return (
        f"{source}({width}×{height}) at x {left}, y {top} on {request.width}×{request.height}, "
        f"blended over {request.feather} px"
    )


def reproduce_line(gen: Generation) -> str:
    """How to make the same image again, in a command a member can type."""
    request = gen.request
    settings = (
        f"seed:{request.seed} steps:{request.steps} guidance:{request.guidance:g} "
        f"sampler:{request.sampler}"
    )
    negative = " (and the same negative prompt)" if request.negative else ""
    prompt = literal(request.prompt)
    if request.mode == "outpaint":
        return (
            f"/remix generation:{gen.id} prompt:{prompt} repaints the same canvas from "
            f"{request.source or 'the same source'} (strength {request.strength:g}, {settings})"
            + negative
        )
    if gen.has_upload or request.source == "upload":
        return (
            f"/imagine prompt:{prompt} image:(the same file) strength:{request.strength:g} "
            f"{settings} at {request.width}×{request.height}{negative}, or "
            f"/remix generation:{gen.id} with the same prompt"
        )
    return (
        f"/imagine prompt:{prompt} {settings}"
        + (f" at {request.width}×{request.height}" if request.mode == "txt2img" else "")
        + negative
    )


def fit_embed(embed: discord.Embed, limit: int = 6000) -> discord.Embed:
    """Shorten the longest field until the embed fits Discord's total size."""
    while len(embed) > limit and embed.fields:
        index, field = max(enumerate(embed.fields), key=lambda pair: len(pair[1].value or ""))
        value = field.value or ""
        if len(value) <= 64:
            break
        embed.set_field_at(
            index,
            name=field.name,
            value=clip(value, len(value) // 2),
            inline=field.inline,
        )
    if len(embed) > limit and embed.description:
        embed.description = clip(
            embed.description, max(100, len(embed.description) - (len(embed) - limit))
        )
    return embed


def status_text(request: GenerationRequest, generation_id: int, state: str) -> str:
    """The author's private status line for a job."""
    return f"**#{generation_id}** {literal(request.prompt, 80)} — {state}"


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


def result_content(
    gen: Generation, parent: Generation | None, *, spoilered: int, withheld: int, removed: int
) -> str:
    """The text of a result message: the author, the prompt (notifications show it), the
    lineage, and what the safety checker kept out of sight."""
    content = f"{user(gen.user_id)} **{literal(gen.prompt, 120)}**"
    line = lineage_line(gen, parent)
    if line:
        content += f" — {line}"
    if spoilered:
        content += (
            "\n⚠️ Content warning: the safety checker flagged "
            f"{plural(spoilered, 'image')}; it is behind a spoiler."
        )
    if withheld:
        content += (
            f"\n🛡️ {plural(withheld, 'image')} withheld for moderator review "
            "(the safety checker flagged it)."
        )
    if removed:
        content += f"\n🛡️ {plural(removed, 'image')} removed by a moderator."
    return content


def info_embed(
    gen: Generation,
    ancestors: Sequence[Generation],
    children: Sequence[Generation],
    *,
    model: str,
) -> discord.Embed:
    """/info: the full recipe, the images, the message, the family tree and how to reproduce."""
    embed = recipe_embed(gen, ancestors[0] if ancestors else None, model=model, images=gen.images)
    embed.title = f"#{gen.id} — {gen.kind}, {gen.status}"
    if gen.images:
        embed.add_field(
            name="Images",
            inline=False,
            value="\n".join(
                f"{image.index + 1}: seed {image.seed}, {image.width}×{image.height}"
                + ("" if image.public else " (withheld)")
                for image in gen.images
            ),
        )
    link = jump_url(gen.guild_id, gen.message_channel_id, gen.message_id)
    if gen.deleted:
        embed.add_field(name="Message", value="deleted", inline=False)
    elif link:
        embed.add_field(name="Message", value=f"[jump to the result]({link})", inline=False)
    root = ancestors[-1] if ancestors else gen
    if ancestors or root.has_upload:
        links = [f"#{a.id} by {user(a.user_id)}" for a in ancestors[:10]]
        if len(ancestors) > 10:
            links.append(f"… ({len(ancestors) - 10} more)")
        if root.has_upload:  # the family tree's root is the member's own picture
            links.append(f"📎 {uploaded_by(root)}")
        embed.add_field(name="Made from", value=clip(" ← ".join(links), 1024), inline=False)
    if children:
        kids = ", ".join(f"#{c.id} {c.kind} by {user(c.user_id)}" for c in children[:20])
        if len(children) > 20:
            kids += f", … ({len(children) - 20} more)"
        embed.add_field(name="Remixed into", value=clip(kids, 1024), inline=False)
    embed.add_field(name="Reproduce", inline=False, value=clip(reproduce_line(gen), 1024))
    return fit_embed(embed)


def history_embed(
    gens: Sequence[Generation], *, whose: str, page: int, pages: int, total: int
) -> discord.Embed:
    """One page of /history: newest first, with links to the results."""
    lines = []
    for gen in gens:
        link = jump_url(gen.guild_id, gen.message_channel_id, gen.message_id)
        prompt = literal(gen.prompt, 70)
        stamp = discord.utils.format_dt(gen.created_at, "R")
        status = "" if gen.status == Status.DONE else " " + gen.status.label
        entry = f"**#{gen.id}** {prompt}{status} · {stamp}"
        if link and not gen.deleted:
            entry += f" · [open]({link})"
        lines.append(entry)
    embed = discord.Embed(
        title=f"History of {plain(whose)}",
        description="\n".join(lines) or "No images yet.",
        colour=EMBED_COLOUR,
    )
    embed.set_footer(text=f"Page {page} of {pages} · {total} in all")
    return embed


def worker_state(info: WorkerInfo) -> str:
    """One worker: `cuda:1 running #12, #13`, `cuda:0 idle`, `ray-2 loading`, `cpu down (…)`."""
    state = info.state.value
    if info.state == WorkerState.RUNNING and info.gen_ids:
        state = "running " + ", ".join(f"#{gen_id}" for gen_id in info.gen_ids)
    elif info.state == WorkerState.DOWN and info.status.detail:
        state = f"down ({clip(info.status.detail, 120)})"
    return f"`{info.status.label}` {state}"


def workers_line(infos: Sequence[WorkerInfo]) -> str:
    """Every worker's state on one line (for /queue and the moderators' log)."""
    return " · ".join(worker_state(info) for info in infos) or "none yet"
