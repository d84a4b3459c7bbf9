"""The diffusion lab's rules: which images the lab may open, and the lab jobs it makes.

A lab view (Steps, Words, CLIP, Noise) replays one visible image's stored recipe with the same
seed, as a new job of whoever asked (like a remix: the source is its parent, its author is
credited); an experiment grid is a new recipe with one or two axes varied. Both go through
admission and the fair queue like any request, at their real cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, cast

from bot.db import Repositories, StoreError
from bot.domain import Generation, Kind, Status, UserError
from bot.settings import Settings
from inference.lab.spec import IMAGE_VIEWS, LabRequest, LabView
from inference.request import GenerationRequest

from .derive import Derivations, Derived
from .visibility import may_build_on

KINDS: dict[str, Kind] = {
    "steps": Kind.LAB_STEPS,
    "words": Kind.LAB_WORDS,
    "clip": Kind.LAB_CLIP,
    "noise": Kind.LAB_NOISE,
    "grid": Kind.LAB_GRID,
}
VIEW_NAMES = {"steps": "Steps", "words": "Words", "clip": "CLIP", "noise": "Noise"}


class Lab:
    def __init__(
        self,
        settings: Settings,
        repos: Repositories,
        derive: Derivations,
        lab_info: Callable[[], Mapping[str, Any]],
    ):
        self.settings = settings
        self.repos = repos
        self.derive = derive
        self.lab_info = lab_info

    # -- what the worker can do ----------------------------------------------------------------

    @property
    def clip_on(self) -> bool:
        return bool(self.lab_info().get("clip"))

    def require_clip(self) -> None:
        if not self.clip_on:
            why = self.lab_info().get("clip_note") or "no CLIP model is loaded"
            raise UserError(f"The CLIP view is off on this server ({why}).")

    # -- sources -------------------------------------------------------------------------------

    async def source(self, guild_id: int | None, gen_id: int, index: int) -> Generation:
        """A generation whose image `index` the lab may open, or a UserError saying why not."""
        gen = await self.derive.here(guild_id, gen_id)
        if gen.status == Status.BLOCKED:
            raise UserError(f"There is no image #{gen_id}.")
        if gen.kind.is_lab:
            where = f" (#{gen.parent_id})" if gen.parent_id else ""
            raise UserError(
                f"#{gen_id} is already a lab picture; open the lab on the image it is about{where}."
            )
        if gen.deleted:
            raise UserError(f"#{gen_id} was deleted, so the lab cannot open it.")
        if gen.status != Status.DONE:
            raise UserError(f"#{gen_id} has no finished image to look at yet.")
        image = gen.image(index)
        if image is None:
            count = len(gen.images)
            raise UserError(f"#{gen_id} has no image {index + 1}; it has {count}.")
        if not may_build_on(image):
            raise UserError(
                f"Image {index + 1} of #{gen_id} is withheld for moderator review, so the lab "
                "cannot open it."
            )
        return gen

    async def _start_image(self, gen: Generation) -> tuple[int, int]:
        """The stored image an image-to-image generation started from (a reroll or remix of
        one started where its parent did)."""
        node: Generation | None = gen
        for _ in range(100):  # deeper than this is a loop in broken data
            if node is None or node.parent_id is None:
                break
            if node.parent_image_index is not None:
                return node.parent_id, node.parent_image_index
            node = await self.repos.generations.get(node.parent_id)
        raise UserError(
            f"#{gen.id} was made from an image that is no longer stored, so the lab cannot "
            "replay it."
        )

    # -- the lab jobs --------------------------------------------------------------------------

    async def view(self, guild_id: int | None, gen_id: int, view: str, index: int = 0) -> Derived:
        """A lab view of image `index` of #`gen_id`, reproduced from its recipe and seed."""
        if view not in IMAGE_VIEWS:
            raise UserError("Pick one of the lab's views: Steps, Words, CLIP or Noise.")
        if view == "clip":
            self.require_clip()
        source = await self.source(guild_id, gen_id, index)
        image = source.image(index)
        assert image is not None  # source() checked it
        recipe = source.request
        if recipe.mode == "upscale" and self.settings.model.upscaler and view in ("steps", "words"):
            raise UserError(
                f"#{gen_id} was made by the latent upscaler, which the lab cannot replay; try "
                "the Noise or CLIP view."
            )
        ref: tuple[int, int] | None = None
        png = None
        try:
            if view in ("noise", "clip"):
                ref = (source.id, index)  # the picture itself
                png = await self.repos.images.read(*ref)
            elif recipe.mode != "txt2img":
                # Replayed from where it started: an upload, or an image of its family.
                png = await self.repos.images.source_of(source)
                if source.upload is None:
                    ref = await self._start_image(source)
        except StoreError as error:
            raise UserError(str(error)) from None
        lab = LabRequest(cast(LabView, view), frames=self.settings.lab.frames, image_ref=ref)
        request = dataclasses.replace(
            recipe,
            seed=image.seed,
            count=1,
            job_id="",
            init_image=png,
            lab=lab,
            width=image.width or recipe.width,
            height=image.height or recipe.height,
        )
        return Derived(request, KINDS[view], source, index)

    def grid(
        self,
        axis: str | None,
        values: str | None,
        axis2: str | None = None,
        values2: str | None = None,
        **recipe: Any,
    ) -> GenerationRequest:
        """An experiment grid of a new recipe: the server's defaults, `recipe`, and the axes.
        The axes are checked when the request is admitted (a bad one is a logged refusal)."""
        request = self.derive.new_request(**recipe)
        lab = LabRequest(
            "grid",
            axis=(axis or "").strip(),
            values=(values or "").strip(),
            axis2=(axis2 or "").strip(),
            values2=(values2 or "").strip(),
        )
        return dataclasses.replace(request, count=1, lab=lab)
