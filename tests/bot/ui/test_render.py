"""Rendering helpers: attachments that fit the upload limit, and the recipe embed's text."""

import io

import numpy as np
from PIL import Image

from bot.text import clip
from bot.ui.render import fit_files, fmt_seconds
from inference.engine import png_with_recipe, read_png_recipe


def noisy_png(size: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return png_with_recipe(Image.fromarray(pixels), {"prompt": "noise", "seed": seed})


def test_files_within_the_limit_are_untouched():
    """Small images go out as they are."""
    pngs = [("a.png", noisy_png(64, 1), False), ("b.png", noisy_png(64, 2), True)]
    files = fit_files(pngs, 10 * 1024 * 1024)
    assert [f.fp.read() for f in files] == [p for _, p, _ in pngs]
    assert [f.filename for f in files] == ["a.png", "SPOILER_b.png"]


def test_files_over_the_limit_are_downscaled_keeping_the_recipe():
    """Four big noisy PNGs over the limit are shrunk until they fit, recipe kept."""
    pngs = [(f"{i}.png", noisy_png(512, i), True) for i in range(4)]
    total = sum(len(p) for _, p, _ in pngs)
    limit = total // 3
    files = fit_files(pngs, limit)
    blobs = [f.fp.read() for f in files]
    assert sum(len(b) for b in blobs) <= limit
    assert all(f.filename.startswith("SPOILER_") for f in files)
    for i, blob in enumerate(blobs):
        image = Image.open(io.BytesIO(blob))
        assert image.width < 512
        assert read_png_recipe(blob)["seed"] == i


def test_text_helpers():
    """Long text is cut with an ellipsis; durations read as people say them."""
    assert clip("abcdef", 4) == "abc…" and clip("abc", 4) == "abc"
    assert fmt_seconds(12.2) == "12 s" and fmt_seconds(600) == "10 min"
    assert fmt_seconds(None) == "unknown"


def test_fit_embed_keeps_discords_size_limit():
    """An embed with long fields is shortened to at most 6000 characters."""
    import discord

    from bot.ui.render import fit_embed

    embed = discord.Embed(title="#1", description="d" * 2000)
    for name in ("Negative", "Made from", "Remixed into", "Reproduce", "Model"):
        embed.add_field(name=name, value="v" * 1024, inline=False)
    assert len(embed) > 6000
    assert len(fit_embed(embed)) <= 6000
    assert embed.description == "d" * 2000  # the prompt is kept when the fields can give
