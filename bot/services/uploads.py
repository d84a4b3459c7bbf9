"""Uploaded images, from bytes to the image an image-to-image job starts from.

A file is judged by its content (never its name or the content type it was sent with): only
real PNG, JPEG and WebP files pass. Its size is checked before anything else and its pixel
count before it is decoded, so a small file that unpacks into a huge image (a decompression
bomb) costs nothing. It is then turned upright (EXIF orientation), flattened onto white where
it is transparent, converted to sRGB, fitted to the model's size and re-encoded as a PNG with
no metadata at all (no EXIF, no GPS position, no text chunks, no colour profile).

Discord-free and torch-free: the Discord layer downloads the bytes, the worker screens the
result with the safety checker (`Screener`), admission decides.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bot.domain import UserError
from bot.settings import Settings
from inference.request import aspect_size, fit_size

if TYPE_CHECKING:
    from PIL.Image import Image

NOT_AN_IMAGE = "That file is not a PNG, JPEG or WebP image."
EMPTY = "That file is empty; attach a PNG, JPEG or WebP image."
UNREADABLE = (
    "That image could not be read (the file may be damaged); try another PNG, JPEG or WebP."
)
FLAGGED = "The safety checker flagged that image, so it was not used; a moderator will take a look."
# Smallest side an upload may have, in pixels.
MIN_SIDE = 16

# Image formats people send that Easel does not take, by their first bytes.
_OTHER_FORMATS: tuple[tuple[bytes, int, str], ...] = (
    (b"GIF87a", 0, "a GIF"),
    (b"GIF89a", 0, "a GIF"),
    (b"BM", 0, "a BMP"),
    (b"II*\x00", 0, "a TIFF"),
    (b"MM\x00*", 0, "a TIFF"),
    (b"ftypheic", 4, "a HEIC"),
    (b"ftypheix", 4, "a HEIC"),
    (b"ftypmif1", 4, "a HEIF"),
    (b"ftypavif", 4, "an AVIF"),
    (b"%PDF", 0, "a PDF"),
)


class UploadError(UserError):
    """An upload Easel will not use; the message says what to send instead (one sentence)."""


class Screener(Protocol):
    """The safety checker, wherever it lives (the inference worker): one flag per image."""

    async def screen(self, pngs: list[bytes]) -> list[bool]: ...


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int  # largest file
    max_source_pixels: int  # most pixels before decoding (the decompression-bomb guard)
    native: int  # the model's native square side
    max_pixels: int  # most pixels of the image the job starts from

    @classmethod
    def of(
        cls, *, max_mb: float, max_megapixels: float, native: int, max_pixels: int
    ) -> UploadLimits:
        return cls(int(max_mb * 2**20), int(max_megapixels * 1e6), native, max_pixels)


@dataclass(frozen=True)
class PreparedUpload:
    """An upload made ready: clean PNG bytes at the size the job will run at."""

    png: bytes
    width: int
    height: int
    source_width: int  # as uploaded, upright
    source_height: int
    format: str  # "PNG", "JPEG" or "WEBP"


def _mb(size: int) -> str:
    mb = size / 2**20
    return f"{round(mb, 1):g}" if mb < 100 else f"{mb:.0f}"


def too_large(size: int, max_bytes: int) -> str:
    """ "Images up to 8 MB; that one is 23 MB." """
    return f"Images up to {_mb(max_bytes)} MB; that one is {_mb(size)} MB."


def sniff(data: bytes) -> str | None:
    """ "PNG", "JPEG" or "WEBP" from the file's first bytes; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def check_bytes(data: bytes, max_bytes: int) -> str:
    """The format of an acceptable file, or an UploadError that says what is wrong with it."""
    if not data:
        raise UploadError(EMPTY)
    if len(data) > max_bytes:
        raise UploadError(too_large(len(data), max_bytes))
    kind = sniff(data)
    if kind is not None:
        return kind
    for magic, offset, name in _OTHER_FORMATS:
        if data[offset : offset + len(magic)] == magic:
            raise UploadError(f"That file is {name} image; send a PNG, JPEG or WebP instead.")
    raise UploadError(NOT_AN_IMAGE)


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f}".rstrip("0").rstrip(".")


def prepare_upload(data: bytes, limits: UploadLimits, aspect: str | None = None) -> PreparedUpload:
    """Check, decode, clean and fit an upload (CPU work: call it in a thread).

    With `aspect`, the image is cropped to that preset's shape (from its middle); without, it
    keeps its own shape (up to 4:1). Either way the area is about the model's native square,
    both sides multiples of 8, within `limits.max_pixels`.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    kind = check_bytes(data, limits.max_bytes)
    try:
        # Opening reads the header only; restricting the decoders keeps Pillow to what we sniffed.
        image = Image.open(io.BytesIO(data), formats=[kind])
    except Image.DecompressionBombError as error:
        # Pillow's own guard (far above ours) fired while reading the header: same refusal.
        found = re.search(r"\((\d+) pixels\)", str(error))
        raise UploadError(_too_many_pixels(int(found[1]) if found else None, limits)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UploadError(UNREADABLE) from None
    with image:
        if image.format != kind:
            raise UploadError(NOT_AN_IMAGE)
        width, height = image.size
        # The decompression-bomb guard: the header's pixel count, before any pixel is decoded.
        if width * height > limits.max_source_pixels:
            raise UploadError(_too_many_pixels(width * height, limits, (width, height)))
        if min(width, height) < MIN_SIDE:
            raise UploadError(
                f"That image is {width}×{height} pixels; send one at least {MIN_SIDE} pixels "
                "on each side."
            )
        try:
            orientation = int(image.getexif().get(0x0112, 1))  # EXIF Orientation
        except Exception:  # a broken EXIF block is ignored, as viewers do
            orientation = 1
        upright = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
        if aspect is None:
            target = fit_size(*upright, limits.native, limits.max_pixels)
        else:
            target = aspect_size(aspect, limits.native)
        if kind == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 size when that still covers the target: less memory.
            side = max(target)
            image.draft(None, (side, side))
        try:
            image.load()
            upright_image = ImageOps.exif_transpose(image) if orientation != 1 else image
            rgb = _to_srgb(_shrink(upright_image, target))
        except (OSError, SyntaxError, ValueError):
            raise UploadError(UNREADABLE) from None
    fitted = _cover(rgb, target)
    buffer = io.BytesIO()
    fitted.save(buffer, format="PNG", optimize=False)  # no pnginfo, no exif, no icc_profile
    return PreparedUpload(
        png=buffer.getvalue(),
        width=fitted.width,
        height=fitted.height,
        source_width=upright[0],
        source_height=upright[1],
        format=kind,
    )


def _too_many_pixels(
    pixels: int | None, limits: UploadLimits, size: tuple[int, int] | None = None
) -> str:
    cap = _megapixels(limits.max_source_pixels)
    if pixels is None:
        return f"That image has too many pixels; send one of at most {cap} megapixels."
    dims = f"{size[0]}×{size[1]} pixels, " if size else ""
    return (
        f"That image is too large ({dims}{_megapixels(pixels)} megapixels); send one of at "
        f"most {cap} megapixels."
    )


def _to_srgb(image: Image) -> Image:
    """Plain 8-bit sRGB: deep images scaled down, transparency flattened onto white, a colour
    profile applied (then dropped)."""
    import numpy as np
    from PIL import Image as PILImage
    from PIL import ImageCms

    icc = image.info.get("icc_profile")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float32)
        if values.size and values.max() > 255:
            values = values / 257.0
        image = PILImage.fromarray(values.clip(0, 255).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PILImage.alpha_composite(white, rgba)
    if image.mode not in ("RGB", "CMYK"):
        image = image.convert("RGB")
    if icc:
        try:
            converted = ImageCms.profileToProfile(
                image,
                ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                ImageCms.createProfile("sRGB"),
                outputMode="RGB",
            )
            if converted is not None:
                image = converted
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass  # an unreadable profile: take the numbers as sRGB, as browsers do
    return image.convert("RGB")


def _shrink(image: Image, target: tuple[int, int]) -> Image:
    """A cheap whole-number box reduction first, while the image stays twice the target (so
    colour conversion and the final resize work on a small copy)."""
    factor = int(min(image.width / (2 * target[0]), image.height / (2 * target[1])))
    if factor < 2:
        return image
    try:
        reduced: Image = image.reduce(factor)
    except ValueError:  # a mode reduce() does not take (1-bit, palette): leave it whole
        return image
    return reduced


def _cover(image: Image, size: tuple[int, int]) -> Image:
    """Scale to cover `size` and crop the middle: no stretching."""
    from PIL import Image as PILImage

    width, height = size
    scale = max(width / image.width, height / image.height)
    crop_w, crop_h = width / scale, height / scale
    left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
    box = (left, top, left + crop_w, top + crop_h)
    resized: Image = image.resize(size, PILImage.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    return resized


class Uploads:
    """Uploads under this server's settings, for the model that is loaded."""

    def __init__(self, settings: Settings, native_size: Callable[[], int]):
        self.settings = settings
        self.native_size = native_size

    @property
    def limits(self) -> UploadLimits:
        g = self.settings.generation
        return UploadLimits.of(
            max_mb=g.max_upload_mb,
            max_megapixels=g.max_upload_megapixels,
            native=self.native_size(),
            max_pixels=g.max_pixels,
        )

    def check_size(self, size: int) -> None:
        """Refuse a file by the size it was announced with, before downloading it."""
        limit = self.limits.max_bytes
        if size > limit:
            raise UploadError(too_large(size, limit))

    async def prepare(self, data: bytes, aspect: str | None = None) -> PreparedUpload:
        """`prepare_upload` in a thread (decoding and resizing are CPU work)."""
        return await asyncio.to_thread(prepare_upload, data, self.limits, aspect)
