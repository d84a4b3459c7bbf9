"""Uploads: judged by content, size and pixel count checked first, turned upright, stripped of
metadata, fitted to the model. Pillow only; no Discord, no worker."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from bot.services.uploads import (
    EMPTY,
    NOT_AN_IMAGE,
    UploadError,
    UploadLimits,
    check_bytes,
    prepare_upload,
    sniff,
    too_large,
)
from tests.bot.services.images import bomb_png, encode, rotated_jpeg, two_tone

LIMITS = UploadLimits.of(max_mb=8, max_megapixels=50, native=64, max_pixels=1024 * 1024)


def opened(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return image


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_are_taken_and_reencoded(fmt):
    """Each accepted format comes out as a PNG at the model's size, keeping its shape."""
    prepared = prepare_upload(encode(two_tone(200, 100), fmt), LIMITS)
    assert (prepared.width, prepared.height, prepared.format) == (88, 40, fmt)
    image = opened(prepared.png)
    assert image.size == (88, 40) and image.mode == "RGB"


def test_aspect_crops_from_the_middle():
    """With an aspect, the image is cropped to that shape instead of stretched."""
    wide = Image.new("RGB", (300, 100), (0, 200, 0))
    wide.paste((200, 0, 0), (0, 0, 100, 100))  # a red left third, cropped away
    prepared = prepare_upload(encode(wide, "PNG"), LIMITS, aspect="square")
    image = opened(prepared.png).convert("RGB")
    assert image.size == (64, 64) and image.getpixel((2, 32))[1] > 150


@pytest.mark.parametrize(
    ("data", "sentence"),
    [
        (b"", EMPTY),
        (b"hello, I am a text file pretending to be a PNG\n" * 20, NOT_AN_IMAGE),
        (encode(two_tone(32, 32), "GIF"), "That file is a GIF image; send a PNG, JPEG or WebP"),
        (encode(two_tone(32, 32), "BMP"), "That file is a BMP image"),
    ],
)
def test_files_that_are_not_png_jpeg_or_webp_are_refused(data, sentence):
    """Judged by the bytes, whatever the name: each refusal says what to send instead."""
    with pytest.raises(UploadError) as refused:
        prepare_upload(data, LIMITS)
    assert str(refused.value).startswith(sentence)


def test_a_png_header_on_garbage_is_unreadable():
    """A file that starts like a PNG but is not one is refused as unreadable, not a crash."""
    with pytest.raises(UploadError, match="could not be read"):
        prepare_upload(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, LIMITS)


def test_too_large_files_are_refused_with_both_sizes():
    """ "Images up to 8 MB; that one is 9 MB." """
    assert too_large(23 * 2**20, 8 * 2**20) == "Images up to 8 MB; that one is 23 MB."
    with pytest.raises(UploadError, match=r"^Images up to 8 MB; that one is 9 MB\.$"):
        check_bytes(b"\x89PNG\r\n\x1a\n" + bytes(9 * 2**20), LIMITS.max_bytes)


def test_tiny_images_are_refused():
    """An image smaller than 16 px a side cannot become a picture."""
    with pytest.raises(UploadError, match="at least 16 pixels"):
        prepare_upload(encode(two_tone(8, 8), "PNG"), LIMITS)


def test_sniff_knows_the_three_formats_only():
    """Magic bytes, not names: RIFF must say WEBP to be a WebP."""
    assert sniff(encode(two_tone(16, 16), "WEBP")) == "WEBP"
    assert sniff(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None


def test_exif_rotation_is_applied_and_metadata_dropped():
    """A sideways JPEG with Orientation 6 comes out upright (red on top, portrait), with no
    EXIF, GPS or colour profile left."""
    prepared = prepare_upload(rotated_jpeg(64, 96), LIMITS)
    assert (prepared.source_width, prepared.source_height) == (64, 96)
    image = opened(prepared.png)
    assert image.size == (48, 72)
    top, bottom = image.getpixel((24, 5)), image.getpixel((24, 66))
    assert top[0] > 150 and top[2] < 100 and bottom[2] > 150 and bottom[0] < 100
    assert not image.info.get("exif") and not image.getexif()
    assert "icc_profile" not in image.info and not getattr(image, "text", {})


def test_transparency_is_flattened_on_white():
    """A transparent sketch background becomes white, not black."""
    sketch = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    sketch.paste((0, 0, 0, 255), (30, 0, 34, 64))
    image = opened(prepare_upload(encode(sketch, "PNG"), LIMITS).png)
    assert image.getpixel((5, 5)) == (255, 255, 255) and image.getpixel((32, 32))[0] < 60


def test_sixteen_bit_and_palette_images_become_rgb():
    """Deep and palette images are converted, not clipped to white."""
    deep = Image.new("I;16", (32, 32), 30000)
    grey = opened(prepare_upload(encode(deep, "PNG"), LIMITS).png).getpixel((5, 5))
    assert 100 < grey[0] < 140
    palette = two_tone(32, 32).convert("P")
    assert opened(prepare_upload(encode(palette, "PNG"), LIMITS).png).mode == "RGB"


def test_a_decompression_bomb_is_refused_by_its_header():
    """A 20,000 × 20,000 PNG of 50 KB is refused with its size, before it is decoded."""
    with pytest.raises(UploadError, match=r"too large \(400 megapixels\).*at most 50 megapixels"):
        prepare_upload(bomb_png(20_000), LIMITS)
    # Under Pillow's own guard, ours names the size.
    with pytest.raises(UploadError, match=r"8000×8000 pixels, 64 megapixels"):
        prepare_upload(bomb_png(8_000), LIMITS)


MEASURE = """
import json, resource, sys
import numpy, PIL.ImageCms, PIL.ImageOps  # what prepare_upload imports lazily, mapped before the cap
from bot.services.uploads import UploadError, UploadLimits, prepare_upload
from tests.bot.services.images import bomb_png

side = int(sys.argv[1])
limits = UploadLimits.of(max_mb=8, max_megapixels=float(sys.argv[2]), native=64,
                         max_pixels=1 << 20)
data = bomb_png(side)
if sys.argv[3] == "cap":
    # The kernel refuses any allocation past this: 128 MB more than the process maps now.
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + (128 << 20), resource.RLIM_INFINITY))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    prepare_upload(data, limits)
    outcome = "decoded"
except UploadError as error:
    outcome = str(error)
except MemoryError:
    outcome = "out of memory"
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_mb": (after - before) / 1024, "outcome": outcome}))
"""


def _measure(side: int, max_megapixels: float, how: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(side), str(max_megapixels), how],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_bomb_costs_no_memory():
    """Refusing the bomb needs no memory to speak of. Two instruments, each with a control that
    decodes a smaller, allowed image (64 MB of 1-bit pixels, 192 MB as RGB) to show it can see
    decoding: a 128 MB address-space cap the kernel enforces, and the process's peak RSS. Some
    sandboxes enforce neither (or update the peak lazily); the test says so rather than pass."""
    refused_capped = _measure(20_000, 50, "cap")
    assert refused_capped["outcome"].startswith("That image is too large"), refused_capped
    if _measure(8_000, 100, "cap")["outcome"] == "out of memory":
        return  # the cap sees decoding, and refusing the bomb fitted under it
    refused = _measure(20_000, 50, "peak")
    assert refused["outcome"].startswith("That image is too large")
    decoded = _measure(8_000, 100, "peak")
    assert decoded["outcome"] == "decoded", decoded
    if decoded["grew_mb"] <= 30:
        pytest.skip(
            f"this machine shows neither an address-space cap nor decoding's peak: {decoded}"
        )
    assert refused["grew_mb"] < 20, refused
    assert decoded["grew_mb"] > refused["grew_mb"] + 20, decoded
