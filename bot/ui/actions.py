"""What a button press or a command does, in Discord terms: one service call and one answer.

The buttons of a result (🎲 ✏️ 🔀 ⬆️ ℹ️ 🗑️, the Zoom out / Pan menu), the status line's Cancel
and the commands that do the same thing (/remix, /info, /delete, /cancel) all come here, so
each exists once; so does /imagine with an uploaded image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import aiohttp
import discord

from bot.db import Repositories
from bot.domain import RefusalReason, Status, UserError
from bot.services import Derived, Services
from bot.services.uploads import UploadError
from bot.settings import Settings
from inference.request import GenerationRequest

from . import lab as lab_render
from . import render
from .buttons import RemixModal
from .delivery import Delivery
from .downloads import download
from .errors import NO_PINGS, reply
from .members import actor_of, origin_of
from .permissions import interaction_is_moderator


class Actions:
    def __init__(
        self,
        settings: Settings,
        repos: Repositories,
        services: Services,
        delivery: Delivery,
        http_session: Callable[[], aiohttp.ClientSession | None] = lambda: None,
    ):
        self.settings = settings
        self.repos = repos
        self.services = services
        self.delivery = delivery
        self.http_session = http_session

    async def _submit(self, interaction: discord.Interaction, derived: Derived) -> None:
        origin = derived.origin(
            interaction.user.id,
            interaction.guild_id,
            interaction.channel_id,
            interaction.user.display_name,
        )
        await self.delivery.submit(interaction, derived.request, origin)

    # --- deriving -------------------------------------------------------------------------

    async def reroll(self, interaction: discord.Interaction, gen_id: int) -> None:
        """🎲 Same recipe, a new seed; the job is the presser's."""
        await self._submit(
            interaction, await self.services.derive.reroll(interaction.guild_id, gen_id)
        )

    async def open_remix(self, interaction: discord.Interaction, gen_id: int) -> None:
        """✏️ A form with the prompt prefilled; same seed and settings on submit."""
        parent = await self.services.derive.source(interaction.guild_id, gen_id)
        await interaction.response.send_modal(
            RemixModal(
                gen_id, parent.prompt, parent.negative, self.settings.generation.max_prompt_chars
            )
        )

    async def remix(self, interaction: discord.Interaction, gen_id: int, **overrides: Any) -> None:
        derived = await self.services.derive.remix(interaction.guild_id, gen_id, **overrides)
        await self._submit(interaction, derived)

    async def vary(self, interaction: discord.Interaction, gen_id: int, index: int) -> None:
        derived = await self.services.derive.vary(interaction.guild_id, gen_id, index)
        await self._submit(interaction, derived)

    async def upscale(self, interaction: discord.Interaction, gen_id: int, index: int) -> None:
        derived = await self.services.derive.upscale(interaction.guild_id, gen_id, index)
        await self._submit(interaction, derived)

    async def zoom(
        self, interaction: discord.Interaction, gen_id: int, index: int, factor: float
    ) -> None:
        """🔭 Zoom out of one image; the job is the presser's."""
        derived = await self.services.derive.zoom(interaction.guild_id, gen_id, index, factor)
        await self._submit(interaction, derived)

    async def pan(
        self, interaction: discord.Interaction, gen_id: int, index: int, direction: str
    ) -> None:
        """⬅ ➡ ⬆ ⬇ Pan one image; the job is the presser's."""
        derived = await self.services.derive.pan(interaction.guild_id, gen_id, index, direction)
        await self._submit(interaction, derived)

    # --- uploads ----------------------------------------------------------------------------

    async def imagine_from_upload(
        self,
        interaction: discord.Interaction,
        attachment: discord.Attachment,
        request: GenerationRequest,
        aspect: str | None,
    ) -> None:
        """/imagine with an image: download it, check and clean it, then admit the job (the
        safety checker screens the image first). Every refusal is one private sentence."""
        # Downloading, decoding and screening can take longer than Discord's 3 seconds.
        await interaction.response.defer(ephemeral=True, thinking=True)
        uploads = self.services.uploads
        origin, actor = origin_of(interaction), actor_of(interaction)
        try:
            uploads.check_size(attachment.size)
            session = self.http_session()
            if session is None:
                raise UploadError("Uploads cannot be downloaded right now; try again soon.")
            data = await download(
                session,
                attachment.url,
                max_bytes=uploads.limits.max_bytes,
                time_limit=self.settings.discord.download_timeout,
            )
            prepared = await uploads.prepare(data, aspect)
        except UploadError as error:
            await self.services.admission.refuse(
                request, origin, actor, RefusalReason.BAD_INPUT, str(error)
            )
        request = dataclasses.replace(request, width=prepared.width, height=prepared.height)
        await self.delivery.submit(interaction, request, origin, upload=prepared.png)

    async def lab(
        self, interaction: discord.Interaction, gen_id: int, view: str, index: int
    ) -> None:
        """🔬 A lab view (Steps, Words, CLIP, Noise) of one image; the job is the asker's."""
        derived = await self.services.lab.view(interaction.guild_id, gen_id, view, index)
        await self._submit(interaction, derived)

    # --- looking ----------------------------------------------------------------------------

    async def info(self, interaction: discord.Interaction, gen_id: int) -> None:
        """The full recipe and the family tree (a refused request only for moderators)."""
        gen = await self.services.derive.here(interaction.guild_id, gen_id)
        if gen.status == Status.BLOCKED and not interaction_is_moderator(
            interaction, self.settings.moderation
        ):
            raise UserError(f"There is no image #{gen_id}.")
        ancestors = await self.repos.history.ancestors(gen_id)
        children = await self.repos.history.children(gen_id)
        embed = render.info_embed(gen, ancestors, children, model=self.settings.model.id)
        lab_render.add_lab_info(embed, gen, await self.repos.lab.get(gen_id))
        await reply(interaction, embed=render.fit_embed(embed))

    # --- removing ---------------------------------------------------------------------------

    async def delete(self, interaction: discord.Interaction, gen_id: int) -> None:
        """🗑 Remove a result from the channel (author or moderator); the log keeps it."""
        gen = await self.services.derive.here(interaction.guild_id, gen_id)
        moderator = interaction_is_moderator(interaction, self.settings.moderation)
        gen = await self.services.jobs.delete(
            actor_of(interaction), interaction.guild_id, gen, moderator=moderator
        )
        await self.delivery.remove_message(gen)
        await reply(interaction, f"Deleted #{gen_id} from the channel; the log keeps its record.")

    async def cancel(self, interaction: discord.Interaction, gen_id: int) -> None:
        """✖️ on a status line: only its author may stop the job."""
        gen = await self.services.jobs.cancel(
            interaction.user.id, gen_id, others="Only the author of a job can cancel it."
        )
        await interaction.response.edit_message(
            content=render.status_text(gen.request, gen_id, "cancelled."),
            view=None,
            attachments=[],  # no preview left behind
            allowed_mentions=NO_PINGS,
        )
