"""Downloading a member's attachment from Discord's CDN with the bot's own HTTP session, within
a time limit and a size limit (the file is streamed and dropped the moment it is too large)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from bot.services.uploads import UploadError, too_large

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


async def download(
    session: aiohttp.ClientSession, url: str, *, max_bytes: int, time_limit: float
) -> bytes:
    """The attachment's bytes, or an UploadError with one sentence saying what went wrong."""
    try:
        async with asyncio.timeout(time_limit):
            async with session.get(url, allow_redirects=True) as response:
                if response.status != 200:
                    raise UploadError(
                        f"Discord did not hand over that file (HTTP {response.status}); "
                        "attach it again."
                    )
                announced = response.content_length
                if announced is not None and announced > max_bytes:
                    raise UploadError(too_large(announced, max_bytes))
                data = bytearray()
                async for chunk in response.content.iter_chunked(CHUNK):
                    data += chunk
                    if len(data) > max_bytes:
                        raise UploadError(
                            f"Images up to {max_bytes / 2**20:g} MB; that one is larger."
                        )
                return bytes(data)
    except TimeoutError:
        raise UploadError(
            f"Downloading that file took longer than {time_limit:g} s; try again, or send a "
            "smaller file."
        ) from None
    except aiohttp.ClientError as error:
        log.warning("Could not download an attachment: %s", error)
        raise UploadError(
            "That file could not be downloaded from Discord; attach it again."
        ) from None
