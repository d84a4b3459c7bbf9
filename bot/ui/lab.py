"""What the lab's results look like in Discord: the caption (one or two sentences that say
what the picture shows), the embed, the CLIP line of plain results, /info of a grid, and the
moderators' "why was this flagged"."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import discord

from bot.domain import Generation, Kind, LabRecord
from bot.text import clip, literal, plain
from inference.lab.spec import LAION_THRESHOLD, ConceptScore

from .render import EMBED_COLOUR, fit_embed

LAION_LINE = f"LAION-5B kept image–caption pairs at {LAION_THRESHOLD:.2f} or more"


def clip_line(scores: Mapping[int, float], indexes: Sequence[int] | None = None) -> str | None:
    """ "0.31 — LAION-5B kept image–caption pairs at 0.28 or more" (one score per image)."""
    shown = [scores[i] for i in sorted(scores) if indexes is None or i in indexes]
    if not shown:
        return None
    return ", ".join(f"{s:.2f}" for s in shown) + f" — {LAION_LINE}"


def _and(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def caption(gen: Generation, record: LabRecord | None) -> str:
    """What the lab picture shows, in one or two sentences."""
    data = record.data if record is not None else {}
    of = f"#{gen.parent_id}" if gen.parent_id else "this image"
    if gen.kind is Kind.LAB_STEPS:
        decoder = " (frames drawn by the tiny decoder)" if data.get("decoder") == "tiny" else ""
        return (
            f"The denoising film of {of}: {data.get('steps', '?')} steps of "
            f"{data.get('sampler', 'the sampler')}, from pure noise to the image — top row the "
            f"noisy latent the model sees at each step, bottom row the clean image it predicts"
            f"{decoder}. The animation plays the predictions; the last one is the posted image."
        )
    if gen.kind is Kind.LAB_WORDS:
        words = [f"“{literal(w)}”" for w in data.get("words", [])]
        more = data.get("more_words", 0)
        extra = f" (and {more} more words not shown)" if more else ""
        levels = " and ".join(f"{h}×{w}" for h, w in data.get("levels", []))
        return (
            f"What each word of {of}'s prompt painted: where the image paid attention to "
            f"{_and(words) or 'its words'}{extra}. Brighter means more cross-attention, averaged "
            f"over the heads, the {levels} layers and every step."
        )
    if gen.kind is Kind.LAB_CLIP:
        sees = ", ".join(data.get("sees", []))
        return (
            f"CLIP rates how well {of}'s prompt and image match: "
            f"{float(data.get('similarity', 0.0)):.2f} — {LAION_LINE}."
            + (f" CLIP sees: {sees}." if sees else "")
        )
    if gen.kind is Kind.LAB_NOISE:
        steps = data.get("timesteps", [0, 999])
        return (
            f"The forward process on {of}: its latents with more and more noise from the "
            f"model's own schedule (t = {steps[0]} to {steps[-1]}), the road from picture to pure "
            "noise that the model learned to walk back."
        )
    if gen.kind is Kind.LAB_GRID:
        axis, axis2 = data.get("axis", "?"), data.get("axis2", "")
        across = f"{axis} across ({', '.join(data.get('columns', []))})"
        down = f" and {axis2} down ({', '.join(data.get('rows', []))})" if axis2 else ""
        return (
            f"An experiment grid: {across}{down}, everything else the same. Each cell's recipe "
            f"is in /info {gen.id} and in the PNG, so any cell can be made again alone."
        )
    return "A lab picture."


def lab_embed(gen: Generation, record: LabRecord | None, *, model: str = "") -> discord.Embed:
    """The embed of a lab result: the caption, the recipe it replayed, what the view found."""
    request = gen.request
    data = record.data if record is not None else {}
    embed = discord.Embed(
        title=f"#{gen.id}", description=clip(caption(gen, record), 4000), colour=EMBED_COLOUR
    )
    embed.add_field(name="Prompt", value=literal(request.prompt, 1024, inline=False), inline=False)
    if request.negative:
        embed.add_field(
            name="Negative", value=literal(request.negative, 1024, inline=False), inline=False
        )
    if gen.kind is not Kind.LAB_GRID:
        embed.add_field(name="Seed", value=str(request.seed))
    embed.add_field(name="Steps", value=str(request.steps))
    embed.add_field(name="Guidance", value=f"{request.guidance:g}")
    embed.add_field(name="Sampler", value=request.sampler)
    embed.add_field(name="Size", value=f"{request.width}×{request.height}")
    if gen.kind is Kind.LAB_CLIP:
        phrases = data.get("phrases", {})
        lines = [
            f"{group}: " + ", ".join(f"{literal(p)} ({s:.2f})" for p, s in ranked)
            for group, ranked in phrases.items()
            if ranked
        ]
        if lines:
            embed.add_field(
                name="Closest phrases", value=clip("\n".join(lines), 1024), inline=False
            )
    embed.add_field(
        name="Model", value=clip(request.model or model or "default", 1024), inline=False
    )
    by = plain(gen.user_name or str(gen.user_id))
    footer = f"🔬 lab · by {by}"
    if gen.inference_seconds:
        footer += f" · made in {gen.inference_seconds:.1f} s"
    embed.set_footer(text=footer)
    return fit_embed(embed)


def add_lab_info(embed: discord.Embed, gen: Generation, record: LabRecord | None) -> None:
    """/info of a lab result: what it is, and for a grid every cell's recipe."""
    if record is None:
        return
    if gen.kind.is_lab:
        embed.add_field(name="Lab", value=clip(caption(gen, record), 1024), inline=False)
    if gen.kind is Kind.LAB_GRID:
        # The grid as a whole is not one /imagine: its cells are.
        for k, existing in enumerate(embed.fields):
            if existing.name == "Reproduce":
                embed.remove_field(k)
                break
        lines = []
        for cell in record.data.get("cells", []):
            r = cell.get("recipe", {})
            lines.append(
                f"{cell.get('label')}: seed {r.get('seed')}, {r.get('steps')} steps, guidance "
                f"{r.get('guidance')}, {r.get('sampler')}"
            )
        embed.add_field(name="Cells", value=clip("\n".join(lines) or "none", 1024), inline=False)
    line = clip_line(record.clip_scores) if record.clip_scores else None
    if line and not gen.kind.is_lab:
        embed.add_field(name="CLIP", value=line, inline=False)


def why_flagged(scores: Sequence[ConceptScore], top: int = 4) -> str:
    """The checker's closest concepts: similarity against each one's threshold, and how far
    over (flagged) or under the line the image was."""
    if not scores:
        return "The checker's scores were not kept for this image."
    concepts = sorted((s for s in scores if s.group == "concept"), key=lambda s: -s.score)
    special = [s for s in scores if s.group == "special" and s.score > 0]
    lines = []
    for s in concepts[:top]:
        side = "over" if s.score > 0 else "under"
        lines.append(
            f"concept {s.index}: similarity {s.similarity:.3f} vs threshold {s.threshold:.3f} "
            f"→ {abs(s.score):.3f} {side} the line"
        )
    if special:
        lines.append(
            f"{len(special)} special-care concept(s) over their line, which lowers every "
            "concept's line by 0.01"
        )
    return "\n".join(lines)


def extra_files(
    gen_id: int, record: LabRecord, limit: int, pngs: Sequence[tuple[str, bytes, bool]]
) -> list[discord.File]:
    """A lab result's extra files (read from disk; call in a thread) that still fit the upload
    limit beside its picture."""
    budget = int(limit * 0.95) - sum(len(data) for _, data, _ in pngs)
    files = []
    for path in record.files:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        if len(data) > budget:
            continue
        budget -= len(data)
        name = path.name.split("_", 1)[-1]
        files.append(discord.File(io.BytesIO(data), filename=f"easel_{gen_id}_{name}"))
    return files
