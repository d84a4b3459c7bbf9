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


def _generation(**overrides):
    from datetime import UTC, datetime

    from bot.domain import Generation, Kind, Status

    values = dict(
        id=5,
        user_id=42,
        user_name="ana",
        guild_id=1,
        channel_id=2,
        kind=Kind.IMAGINE,
        parent_id=None,
        parent_image_index=None,
        recipe={"prompt": "my cat", "seed": 3, "mode": "img2img", "strength": 0.6},
        status=Status.DONE,
        refusal_reason=None,
        refusal_message=None,
        error=None,
        flagged=False,
        prompt_truncated=False,
        runs=1,
        attempts=1,
        batch_size=1,
        created_at=datetime.now(UTC),
        queued_at=None,
        started_at=None,
        finished_at=None,
        inference_seconds=None,
        timings={},
        message_channel_id=None,
        message_id=None,
        delivered_at=None,
        deleted_at=None,
        deleted_by=None,
        review=None,
        reviewed_by=None,
        reviewed_at=None,
    )
    values.update(overrides)
    return Generation(**values)


def test_an_upload_is_credited_and_is_the_root_of_the_tree():
    """ "from an image uploaded by @member", and /info's chain ends at the upload."""
    from bot.domain import Kind
    from bot.ui.render import info_embed, lineage_line

    upload = _generation(upload="5.png")
    assert lineage_line(upload, None) == "from an image uploaded by <@42>"
    assert lineage_line(_generation(), None) is None
    child = _generation(id=6, user_id=7, kind=Kind.REMIX, parent_id=5)
    embed = info_embed(child, [upload], [], model="m")
    chains = [f.value for f in embed.fields if f.name == "Made from"]
    assert chains[-1] == "#5 by <@42> ← 📎 an image uploaded by <@42>"
    own = info_embed(upload, [], [], model="m")
    assert [f.value for f in own.fields if f.name == "Made from"][-1] == (
        "📎 an image uploaded by <@42>"
    )


def test_a_zoom_shows_its_canvas_and_how_to_reproduce_it():
    """The recipe embed names the source, its place and the blend band; /info says /remix."""
    from bot.domain import Kind
    from bot.ui.render import info_embed, lineage_line

    parent = _generation(id=3, recipe={"prompt": "a harbour", "seed": 1})
    zoom = _generation(
        id=9,
        user_id=8,
        kind=Kind.ZOOM,
        parent_id=3,
        parent_image_index=0,
        recipe={
            "prompt": "a harbour",
            "seed": 2,
            "mode": "outpaint",
            "strength": 1.0,
            "width": 128,
            "height": 128,
            "paste": [32, 32, 64, 64],
            "feather": 8,
            "source": "#3 image 1",
        },
    )
    assert lineage_line(zoom, parent) == "zoom out of #3 (image 1) by <@42>"
    fields = {f.name: f.value for f in info_embed(zoom, [parent], [], model="m").fields}
    assert fields["Canvas"] == "#3 image 1 (64×64) at x 32, y 32 on 128×128, blended over 8 px"
    assert fields["Reproduce"].startswith("/remix generation:9 prompt:a harbour")
