"""Image files for the upload tests: real PNG, JPEG and WebP files, EXIF rotations, a
decompression bomb, and files that only pretend to be images."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def two_tone(width: int, height: int) -> Image.Image:
    """Red on top, blue below: which way is up can be read back from the pixels."""
    image = Image.new("RGB", (width, height), (220, 20, 20))
    image.paste((20, 20, 220), (0, height // 2, width, height))
    return image


def rotated_jpeg(width: int = 64, height: int = 96) -> bytes:
    """A JPEG whose pixels lie on their side with EXIF Orientation 6 ("rotate 90° clockwise
    to show"): upright, it is `width` × `height`, red on top, with a GPS tag to be dropped."""
    stored = two_tone(width, height).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    exif[0x010F] = "SpyCam"  # Make
    exif[0x8825] = {2: (51.0, 30.0, 0.0)}  # GPSInfo: a latitude
    return encode(stored, "JPEG", exif=exif.tobytes(), quality=95)


def bomb_png(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of `side` × `side` pixels in a few tens of kilobytes: decoded, it
    would take side² bytes (400 MB for 20,000) and three times that as RGB."""
    row = b"\x00" + bytes((side + 7) // 8)  # filter byte + one bit per pixel, all black
    compressor = zlib.compressobj(9)
    chunks = [compressor.compress(row) for _ in range(side)]
    data = b"".join(chunks) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )
