"""Uploads, Zoom out and Pan end to end: the real bot, the fake Discord (whose CDN serves the
attachments), the tiny model in a real worker."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from inference.engine import read_png_recipe
from tests.bot.e2e import queued_id, result, running_easel
from tests.bot.services.images import bomb_png, encode, rotated_jpeg, two_tone

pytestmark = pytest.mark.asyncio(loop_scope="module")

MANAGE_MESSAGES = 1 << 13


async def refusal(handle) -> str:
    """The private sentence a refused /imagine got (after its private 'thinking…')."""
    await handle.response()
    message = await handle.wait_for_message(lambda m: not m.loading, timeout=20)
    assert message.ephemeral, message
    return message.content


def size_of(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def fields(embed) -> dict[str, str]:
    return {f["name"]: f["value"] for f in embed.get("fields") or []}


async def upload_imagine(fd, member, data: bytes, filename: str, **options):
    attachment = fd.upload(data, filename)
    return await fd.invoke(
        member, "imagine", {"prompt": "my own picture", "image": attachment, **options}
    )


async def pick(fd, member, message, value: str):
    """Choose an entry of a result's Zoom out / Pan menu."""
    (menu,) = [
        c
        for row in message.components
        for c in row["components"]
        if str(c.get("custom_id", "")).startswith("easel:outpaint:")
    ]
    return await fd.select(member, message, menu["custom_id"], [value])


# --- uploads ---------------------------------------------------------------------------------


async def test_an_upload_becomes_an_image_to_image_result(fd, bot):
    """A 200×100 PNG (named anything) gives an image-to-image result at the model's size with
    the upload's shape, credited to the uploader, kept as <id>.png, with the upload as the
    root of /info's family tree and in the log and export."""
    ana = fd.add_member("ana")
    handle = await upload_imagine(fd, ana, encode(two_tone(200, 100), "PNG"), "holiday.png")
    first = await handle.response()
    assert first.type == 5 and first.elapsed < 3.0  # deferred privately at once
    gen_id = await queued_id(handle)
    note = handle.original
    assert note.ephemeral and "passed the checks" in note.content
    message = await result(fd, gen_id)
    assert size_of(message.attachments[0].data) == (88, 40)
    assert f"from an image uploaded by <@{ana.id}>" in message.content
    gen = await bot.repos.generations.get(gen_id)
    assert gen.recipe["mode"] == "img2img" and gen.recipe["source"] == "upload"
    assert gen.recipe["strength"] == bot.settings.generation.upload_strength
    assert gen.upload == f"{gen_id}.png"
    stored = (bot.settings.data.dir / "uploads" / f"{gen_id}.png").read_bytes()
    assert (
        size_of(stored) == (88, 40)
        and not (bot.settings.data.dir / "uploads" / "holiday.png").exists()
    )
    assert read_png_recipe(message.attachments[0].data)["source"] == "upload"
    # The status line (a followup here) went away with the result.
    await fd.wait_until(lambda: all(m.deleted for m in handle.followups), timeout=10)

    info = await fd.invoke(ana, "info", {"generation": gen_id})
    embed = (await info.response()).message.embeds[0]
    assert fields(embed)["Made from"].endswith(f"📎 an image uploaded by <@{ana.id}>")
    assert "image:(the same file)" in fields(embed)["Reproduce"]

    # A variation of it: the upload stays the root two generations down.
    remix = await fd.invoke(
        ana, "remix", {"generation": gen_id, "prompt": "my own picture, at night"}
    )
    child_id = await queued_id(remix)
    await result(fd, child_id)
    child = await bot.repos.generations.get(child_id)
    assert child.recipe["mode"] == "img2img" and child.upload is None
    info = await fd.invoke(ana, "info", {"generation": child_id})
    chain = fields((await info.response()).message.embeds[0])["Made from"]
    assert chain == f"#{gen_id} by <@{ana.id}> ← 📎 an image uploaded by <@{ana.id}>"

    rows = await bot.repos.export.export_rows(guild_id=fd.guild.id)
    (row,) = [r for r in rows if r["generation_id"] == gen_id]
    assert row["upload"] == f"uploads/{gen_id}.png" and row["source"] == "upload"


async def test_a_job_that_starts_before_its_status_line_keeps_the_private_note(fd, bot):
    """The upload's job can start while the public status line is still being sent (here
    Discord takes a second to create it): "starting…" must not overwrite the member's private
    "passed the checks" note, and the result still arrives."""
    eli = fd.add_member("eli")
    slow = fd.slow("POST", r"/webhooks/\d+/[^/]+$", 1.0)  # the followup: the status line
    handle = await upload_imagine(fd, eli, encode(two_tone(200, 100), "PNG"), "sketch.png")
    gen_id = await queued_id(handle)
    message = await result(fd, gen_id)
    assert slow.served, "the status line was not slowed"
    assert "passed the checks" in handle.original.content, handle.original.content
    assert f"from an image uploaded by <@{eli.id}>" in message.content
    # The status line, sent after the result was out, goes too.
    await fd.wait_until(
        lambda: handle.followups and all(m.deleted for m in handle.followups), timeout=10
    )


async def test_aspect_and_strength_apply_to_an_upload(fd, bot):
    """With aspect the upload is cropped to it; strength is recorded."""
    bo = fd.add_member("bo")
    handle = await upload_imagine(
        fd, bo, encode(two_tone(200, 100), "WEBP"), "x.webp", aspect="square", strength=0.5
    )
    gen_id = await queued_id(handle)
    message = await result(fd, gen_id)
    assert size_of(message.attachments[0].data) == (64, 64)
    assert (await bot.repos.generations.get(gen_id)).recipe["strength"] == 0.5


async def test_a_rotated_jpeg_comes_out_upright(fd, bot):
    """EXIF Orientation 6: the result is portrait and the stored upload red on top, without
    the camera's metadata."""
    cy = fd.add_member("cy")
    gen_id = await queued_id(await upload_imagine(fd, cy, rotated_jpeg(64, 96), "IMG_0001.JPG"))
    message = await result(fd, gen_id)
    assert size_of(message.attachments[0].data) == (48, 72)
    stored = Image.open(bot.settings.data.dir / "uploads" / f"{gen_id}.png")
    assert stored.size == (48, 72)
    top, bottom = stored.getpixel((24, 4)), stored.getpixel((24, 67))
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]
    assert not stored.getexif() and "exif" not in stored.info


@pytest.mark.parametrize(
    ("data", "filename", "sentence"),
    [
        (
            b"Dear diary, today I pretended to be a picture.\n" * 10,
            "drawing.png",
            "That file is not a PNG, JPEG or WebP image.",
        ),
        (
            encode(two_tone(32, 32), "GIF"),
            "cat.gif",
            "That file is a GIF image; send a PNG, JPEG or WebP instead.",
        ),
        (b"", "empty.png", "That file is empty; attach a PNG, JPEG or WebP image."),
        (
            b"\x89PNG\r\n\x1a\n" + bytes(9 * 2**20),
            "huge.png",
            "Images up to 8 MB; that one is 9 MB.",
        ),
        (
            bomb_png(20_000),
            "bomb.png",
            "That image is too large (400 megapixels); send one of at most 50 megapixels.",
        ),
    ],
)
async def test_bad_uploads_are_refused_with_their_sentence(fd, bot, data, filename, sentence):
    """Each bad file gets its own private sentence and a logged refusal; nothing is queued
    and nothing is kept."""
    dee = fd.add_member("dee")
    handle = await upload_imagine(fd, dee, data, filename)
    assert await refusal(handle) == sentence
    (gen,) = await bot.repos.history.moderation_log(guild_id=fd.guild.id, user_id=dee.id)
    assert (gen.status, gen.refusal_reason, gen.refusal_message) == (
        "blocked",
        "bad_input",
        sentence,
    )
    assert gen.upload is None and bot.scheduler.waiting_count == 0
    assert not [m for m in fd.messages() if "**#" in (m.content or "")]


async def test_a_failed_download_is_a_sentence(fd, bot):
    """The CDN does not hand over the file: the member is told, and the request is logged."""
    eve = fd.add_member("eve")
    attachment = fd.upload(encode(two_tone(64, 64), "PNG"), "gone.png")
    del fd.attachments[attachment.id]  # the CDN answers 404 from now on
    handle = await fd.invoke(eve, "imagine", {"prompt": "x", "image": attachment})
    assert (
        await refusal(handle) == "Discord did not hand over that file (HTTP 404); attach it again."
    )


async def test_strength_without_an_image_is_refused(fd, bot):
    """strength belongs to an upload."""
    fay = fd.add_member("fay")
    handle = await fd.invoke(fay, "imagine", {"prompt": "a fox", "strength": 0.4})
    message = (await handle.response()).message
    assert message.ephemeral and "strength goes with an uploaded image" in message.content


# --- zoom out and pan -----------------------------------------------------------------------


async def imagine(fd, member, **options):
    gen_id = await queued_id(await fd.invoke(member, "imagine", {"prompt": "a harbour", **options}))
    return gen_id, await result(fd, gen_id)


async def test_zoom_out_2x_doubles_the_canvas_and_keeps_the_source(fd, bot):
    """The menu's Zoom out 2×: a 128×128 image, the source exact in the middle outside the
    blend band, credited "zoom out of #N (image 1) by @author", the job the presser's."""
    gus, hal = fd.add_member("gus"), fd.add_member("hal")
    gen_id, message = await imagine(fd, gus, seed=11)
    menu = [
        c
        for row in message.components
        for c in row["components"]
        if str(c.get("custom_id", "")).startswith("easel:outpaint:")
    ]
    assert len(menu) == 1 and len(menu[0]["options"]) == 6
    zoom_id = await queued_id(await pick(fd, hal, message, "zoom:2:0"))
    zoomed = await result(fd, zoom_id)
    out = pixels(zoomed.attachments[0].data)
    source = pixels(message.attachments[0].data)
    assert out.shape == (128, 128, 3)
    gen = await bot.repos.generations.get(zoom_id)
    band = gen.recipe["feather"]
    assert gen.recipe["paste"] == [32, 32, 64, 64] and band == 8
    assert np.array_equal(
        out[32 + band : 96 - band, 32 + band : 96 - band], source[band:-band, band:-band]
    )
    assert not np.array_equal(out[32:96, 32:96], source)  # the band itself was blended
    assert f"zoom out of #{gen_id} (image 1) by <@{gus.id}>" in zoomed.content
    assert gen.user_id == hal.id and gen.kind == "zoom" and gen.parent_id == gen_id
    info = await fd.invoke(hal, "info", {"generation": zoom_id})
    info_fields = fields((await info.response()).message.embeds[0])
    assert f"#{gen_id} image 1 (64×64) at x 32, y 32 on 128×128" in info_fields["Canvas"]
    assert f"/remix generation:{zoom_id}" in info_fields["Reproduce"]
    # /remix of the zoom repaints the same canvas around the same source with a new prompt.
    remix_id = await queued_id(
        await fd.invoke(gus, "remix", {"generation": zoom_id, "prompt": "a harbour at dusk"})
    )
    remixed = pixels((await result(fd, remix_id)).attachments[0].data)
    assert remixed.shape == (128, 128, 3)
    assert np.array_equal(remixed[40:88, 40:88], source[8:56, 8:56])


@pytest.mark.parametrize(
    ("direction", "shape", "kept"),
    [
        ("left", (64, 96), (slice(None), slice(40, 96))),
        ("right", (64, 96), (slice(None), slice(0, 56))),
        ("up", (96, 64), (slice(40, 96), slice(None))),
        ("down", (96, 64), (slice(0, 56), slice(None))),
    ],
)
async def test_each_pan_extends_its_own_side(fd, bot, direction, shape, kept):
    """Pan ⬅ ➡ ⬆ ⬇: half the size more on that side, the source untouched on the other."""
    ida = fd.add_member("ida")
    gen_id, message = await imagine(fd, ida, seed=5)
    pan_id = await queued_id(await pick(fd, ida, message, f"pan:{direction}:0"))
    panned = await result(fd, pan_id)
    out = pixels(panned.attachments[0].data)
    source = pixels(message.attachments[0].data)
    assert out.shape[:2] == shape
    rows, cols = kept
    source_part = {
        "left": source[:, 8:],
        "right": source[:, :56],
        "up": source[8:],
        "down": source[:56],
    }[direction]
    assert np.array_equal(out[rows, cols], source_part)
    assert f"pan of #{gen_id} (image 1)" in panned.content


async def test_zoom_of_a_multi_image_result_picks_the_image(fd, bot):
    """Every shown image has its own entries; the second one is zoomed."""
    jo = fd.add_member("jo")
    _gen_id, message = await imagine(fd, jo, count=2, seed=3)
    zoom_id = await queued_id(await pick(fd, jo, message, "zoom:2:1"))
    zoomed = await result(fd, zoom_id)
    out = pixels(zoomed.attachments[0].data)
    assert np.array_equal(out[40:88, 40:88], pixels(message.attachments[1].data)[8:56, 8:56])
    assert (await bot.repos.generations.get(zoom_id)).parent_image_index == 1


async def test_a_zoom_over_max_pixels_is_refused(fd, worker, tiny_model_dir, tmp_path):
    """With max_pixels 12288, 1.5× of a 64×64 image fits and 2× is refused with a sentence."""
    kai = fd.add_member("kai")
    async with running_easel(
        fd, worker, tmp_path, tiny_model_dir, EASEL_GENERATION_MAX_PIXELS="12288"
    ):
        _gen_id, message = await imagine(fd, kai)
        refused = await pick(fd, kai, message, "zoom:2:0")
        answer = (await refused.response()).message
        assert (
            answer.ephemeral
            and "would make it 128×128, more than this server's 12288" in answer.content
        )
        ok_id = await queued_id(await pick(fd, kai, message, "zoom:1.5:0"))
        assert size_of((await result(fd, ok_id)).attachments[0].data) == (96, 96)


async def test_the_menu_works_after_a_restart(fd, worker, tiny_model_dir, tmp_path):
    """A result posted before a restart can be panned after it."""
    lou = fd.add_member("lou")
    async with running_easel(fd, worker, tmp_path, tiny_model_dir):
        gen_id, message = await imagine(fd, lou, seed=9)
    async with running_easel(fd, worker, tmp_path, tiny_model_dir) as restarted:
        pan_id = await queued_id(await pick(fd, lou, message, "pan:up:0"))
        assert size_of((await result(fd, pan_id)).attachments[0].data) == (64, 96)
        assert (await restarted.repos.generations.get(pan_id)).parent_id == gen_id
