"""Derivations: new jobs made from an existing image (reroll, remix, vary, upscale, zoom out,
pan).

Each one checks that its source may be built on (this server's, not refused, not deleted,
finished, not withheld) and returns the request with its lineage; the caller submits it through
admission like any other request. Anyone may derive from anyone's image: the new job belongs to
whoever asked, and its parent is the image it came from.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.db import Repositories, StoreError
from bot.domain import Generation, JobOrigin, Kind, Status, UserError
from bot.settings import Settings
from inference import outpaint
from inference.request import GenerationRequest

from .visibility import may_build_on


@dataclass(frozen=True)
class Derived:
    """A request made from another generation, ready for admission."""

    request: GenerationRequest
    kind: Kind
    parent: Generation
    parent_index: int | None = None

    def origin(
        self, user_id: int, guild_id: int | None, channel_id: int | None, user_name: str | None
    ) -> JobOrigin:
        return JobOrigin(
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            kind=self.kind,
            parent_id=self.parent.id,
            parent_image_index=self.parent_index,
            user_name=user_name,
        )


def enough_steps(steps: int, strength: float) -> int:
    """Image-to-image runs only steps × strength of them: keep at least one."""
    return max(steps, math.ceil(1 / strength))


class Derivations:
    def __init__(self, settings: Settings, repos: Repositories, native_size: Callable[[], int]):
        self.settings = settings
        self.repos = repos
        self.native_size = native_size

    def new_request(self, **values: Any) -> GenerationRequest:
        """A request with the server's defaults (the model's native square), then `values`
        (None values leave the default)."""
        g = self.settings.generation
        request = GenerationRequest(
            prompt="",
            steps=g.default_steps,
            guidance=g.default_guidance,
            count=g.default_count,
            sampler=g.default_sampler,
            model=self.settings.model.id,
            width=self.native_size(),
            height=self.native_size(),
        )
        return dataclasses.replace(request, **{k: v for k, v in values.items() if v is not None})

    # -- sources -------------------------------------------------------------------------------

    async def here(self, guild_id: int | None, gen_id: int) -> Generation:
        """Generation #N of this server: ids from other servers are as good as unknown."""
        gen = await self.repos.generations.get(gen_id)
        if gen is None or gen.guild_id != guild_id:
            raise UserError(f"There is no image #{gen_id}.")
        return gen

    async def source(
        self, guild_id: int | None, gen_id: int, index: int | None = None
    ) -> Generation:
        """A generation others may build on, or a UserError saying why not."""
        gen = await self.here(guild_id, gen_id)
        if gen.status == Status.BLOCKED:
            raise UserError(f"There is no image #{gen_id}.")
        if gen.kind.is_lab:
            raise UserError(
                f"#{gen_id} is a lab picture, not an image to remix; remix the image it is about."
            )
        if gen.deleted:
            raise UserError(f"#{gen_id} was deleted, so it cannot be remixed.")
        if gen.status != Status.DONE:
            raise UserError(f"#{gen_id} has no finished images to build on yet.")
        if index is not None:
            image = gen.image(index)
            if image is None:
                raise UserError(f"#{gen_id} has no image {index + 1}.")
            if not may_build_on(image):
                raise UserError(
                    f"Image {index + 1} of #{gen_id} is withheld for moderator "
                    "review, so it cannot be remixed."
                )
        elif gen.images and not any(may_build_on(image) for image in gen.images):
            raise UserError(f"#{gen_id} is withheld for moderator review, so it cannot be remixed.")
        return gen

    async def _source_png(self, gen_id: int | None, index: int | None) -> bytes:
        if gen_id is None or index is None:
            raise UserError("The source image of this remix is gone.")
        try:
            return await self.repos.images.read(gen_id, index)
        except StoreError as error:
            raise UserError(str(error)) from None

    async def _grandparent_png(self, guild_id: int | None, parent: Generation) -> bytes:
        """The image an image-to-image generation started from, if it may still be built on:
        the image it was uploaded with, the image of its parent it was made from (a variation,
        upscale, zoom or pan), or, for a reroll or remix of one, that one's source."""
        gen = parent
        for _ in range(100):  # deeper than this is a loop in broken data
            if gen.upload is not None:
                try:
                    return await self.repos.images.read_upload(gen)
                except StoreError as error:
                    raise UserError(str(error)) from None
            if gen.parent_id is None:
                break
            if gen.parent_image_index is not None:
                await self.source(guild_id, gen.parent_id, gen.parent_image_index)
                return await self._source_png(gen.parent_id, gen.parent_image_index)
            gen = await self.here(guild_id, gen.parent_id)
        raise UserError("The source image of this remix is gone.")

    async def _same_source(
        self, guild_id: int | None, parent: Generation, request: GenerationRequest
    ) -> GenerationRequest:
        """A reroll or remix of an image-to-image result starts from the same source image."""
        if request.mode == "txt2img":
            return request
        return dataclasses.replace(
            request, init_image=await self._grandparent_png(guild_id, parent)
        )

    # -- the derivations -----------------------------------------------------------------------

    async def reroll(self, guild_id: int | None, gen_id: int) -> Derived:
        """🎲 Same recipe, a new seed."""
        parent = await self.source(guild_id, gen_id)
        request = dataclasses.replace(parent.request, seed=None, job_id="", init_image=None)
        request = await self._same_source(guild_id, parent, request)
        return Derived(request, Kind.REROLL, parent)

    async def remix(self, guild_id: int | None, gen_id: int, **overrides: Any) -> Derived:
        """Same seed and settings as the source, with a new prompt and any overrides."""
        parent = await self.source(guild_id, gen_id)
        values = {k: v for k, v in overrides.items() if v is not None}
        request = dataclasses.replace(parent.request, job_id="", init_image=None, **values)
        request = await self._same_source(guild_id, parent, request)
        return Derived(request, Kind.REMIX, parent)

    async def vary(self, guild_id: int | None, gen_id: int, index: int) -> Derived:
        """🔀 Image-to-image from one image, a new seed."""
        parent = await self.source(guild_id, gen_id, index)
        image = parent.image(index)
        assert image is not None  # source() checked it
        strength = self.settings.generation.vary_strength
        request = dataclasses.replace(
            parent.request,
            mode="img2img",
            seed=None,
            count=1,
            job_id="",
            init_image=await self._source_png(gen_id, index),
            source=f"#{gen_id} image {index + 1}",
            paste=None,  # a variation of a zoom or pan is plain image-to-image
            feather=0,
            strength=strength,
            steps=enough_steps(parent.request.steps, strength),
            width=image.width or parent.request.width,
            height=image.height or parent.request.height,
        )
        return Derived(request, Kind.VARY, parent, index)

    async def upscale(self, guild_id: int | None, gen_id: int, index: int) -> Derived:
        """⬆️ Twice the size of one image: resize, then a light image-to-image pass."""
        parent = await self.source(guild_id, gen_id, index)
        image = parent.image(index)
        assert image is not None  # source() checked it
        strength = self.settings.generation.upscale_strength
        request = dataclasses.replace(
            parent.request,
            mode="upscale",
            seed=image.seed,
            count=1,
            job_id="",
            init_image=await self._source_png(gen_id, index),
            source=f"#{gen_id} image {index + 1}",
            paste=None,
            feather=0,
            width=(image.width or parent.request.width) * 2,
            height=(image.height or parent.request.height) * 2,
            strength=strength,
            steps=enough_steps(parent.request.steps, strength),
        )
        return Derived(request, Kind.UPSCALE, parent, index)

    async def zoom(self, guild_id: int | None, gen_id: int, index: int, factor: float) -> Derived:
        """🔭 Zoom out: the image in the middle of a canvas `factor` times its size, the new
        area painted around it."""
        parent, png, width, height = await self._outpaint_source(guild_id, gen_id, index)
        geometry = outpaint.zoom_out(width, height, factor)
        what = f"Zooming out {factor:g}×"
        return self._outpaint(parent, index, png, geometry, Kind.ZOOM, what, gen_id)

    async def pan(self, guild_id: int | None, gen_id: int, index: int, direction: str) -> Derived:
        """⬅ ➡ ⬆ ⬇ Pan: the canvas extended by half the image's size on one side."""
        if direction not in outpaint.DIRECTIONS:
            raise UserError(f"Pan goes left, right, up or down, not {direction!r}.")
        parent, png, width, height = await self._outpaint_source(guild_id, gen_id, index)
        geometry = outpaint.pan(width, height, direction)
        return self._outpaint(
            parent, index, png, geometry, Kind.PAN, f"Panning {direction}", gen_id
        )

    async def _outpaint_source(
        self, guild_id: int | None, gen_id: int, index: int
    ) -> tuple[Generation, bytes, int, int]:
        parent = await self.source(guild_id, gen_id, index)
        image = parent.image(index)
        assert image is not None  # source() checked it
        width = image.width or parent.request.width
        height = image.height or parent.request.height
        return parent, await self._source_png(gen_id, index), width, height

    def _outpaint(
        self,
        parent: Generation,
        index: int,
        png: bytes,
        geometry: outpaint.Outpaint,
        kind: Kind,
        what: str,
        gen_id: int,
    ) -> Derived:
        g = self.settings.generation
        _, _, width, height = geometry.paste
        if geometry.pixels > g.max_pixels:
            raise UserError(
                f"{what} image {index + 1} of #{gen_id} ({width}×{height}) would make it "
                f"{geometry.width}×{geometry.height}, more than this server's "
                f"{g.max_pixels} pixels; it is already as large as it can get."
            )
        strength = g.outpaint_strength
        request = dataclasses.replace(
            parent.request,
            mode="outpaint",
            seed=None,
            count=1,
            job_id="",
            init_image=png,
            strength=strength,
            steps=enough_steps(parent.request.steps, strength),
            width=geometry.width,
            height=geometry.height,
            paste=geometry.paste,
            feather=geometry.feather,
            source=f"#{gen_id} image {index + 1}",
        )
        return Derived(request, kind, parent, index)
