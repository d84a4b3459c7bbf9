"""From an admitted request to a status line, and from a finished job to a message in the
channel.

`Delivery` submits requests through admission (for /imagine, /remix and the buttons), keeps
each job's public status line up to date as it moves through the queue, and posts results,
failures and safety notices. It is the scheduler's listener.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import time
from typing import Any

import discord

from bot.db import Repositories
from bot.domain import Generation, JobOrigin, Status, StatusLine, plural
from bot.queue import QuietListener, Scheduler
from bot.services import Services
from bot.services.modlog import ModLog
from bot.services.visibility import sort_images
from bot.settings import Settings
from bot.text import clip, user
from inference.request import GenerationRequest, GenerationResult

from . import render
from .buttons import cancel_view, result_view
from .errors import NO_PINGS, allow_user_ping
from .members import actor_of

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024


@dataclasses.dataclass
class _Status:
    """The public status line of one job (the interaction's original response)."""

    interaction: discord.Interaction
    request: GenerationRequest
    last_edit: float = 0.0
    preview: bytes | None = None  # newest preview not yet shown
    sent: bool = False  # the status line exists
    delivered: bool = False  # the result is out: the status line should go


class Delivery(QuietListener):
    def __init__(
        self,
        client: discord.Client,
        settings: Settings,
        repos: Repositories,
        services: Services,
        scheduler: Scheduler,
        modlog: ModLog,
    ):
        self.client = client
        self.settings = settings
        self.repos = repos
        self.services = services
        self.scheduler = scheduler
        self.modlog = modlog
        self._status: dict[int, _Status] = {}

    # --- submitting ---------------------------------------------------------------------

    async def submit(
        self, interaction: discord.Interaction, request: GenerationRequest, origin: JobOrigin
    ) -> Generation:
        """Admit the request (a refusal is a UserError the member sees privately), then answer
        with its public status line."""
        # One quick SQLite write; the answer goes out well inside Discord's 3 seconds.
        gen = await self.services.admission.admit(request, origin, actor_of(interaction))
        queued = dataclasses.replace(request, seed=gen.recipe.get("seed"))
        status = self._status[gen.id] = _Status(interaction, queued)
        # The status is public, like the queue itself; it goes away when the result is posted.
        callback = await interaction.response.send_message(
            self._queued_text(gen.id, queued), view=cancel_view(gen.id), allowed_mentions=NO_PINGS
        )
        status.sent = True
        message_id = getattr(callback, "message_id", None) or getattr(
            getattr(callback, "resource", None), "id", None
        )
        if message_id and interaction.channel_id:
            # Remembered so the line can still be removed after 15 minutes or a restart.
            line = StatusLine(interaction.channel_id, int(message_id))
            await self.repos.generations.set_status_line(gen.id, line)
        if status.delivered:  # a fast job finished before its status line was even sent
            await self._remove_status_line(gen.id, status)
        return gen

    def _queued_text(self, gen_id: int, request: GenerationRequest) -> str:
        scheduler = self.scheduler
        position = scheduler.position(gen_id)
        eta = scheduler.eta_seconds(gen_id)
        if position is None:
            state = "starting…"
        elif position == 0:
            state = "running"
        else:
            loading = scheduler.readiness().describe()
            state = (
                f"queued, position {position} of {scheduler.waiting_count}"
                + (f" ({loading})" if loading else "")
                + f", ready in about {render.fmt_seconds(eta)}"
            )
        return render.status_text(request, gen_id, state)

    # --- scheduler listener ---------------------------------------------------------------

    async def on_started(self, gen: Generation) -> None:
        status = self._status.get(gen.id)
        if status is not None:
            # The first progress edit comes one interval after this one.
            status.last_edit = time.monotonic()
            await self._edit_status(
                gen.id, render.status_text(status.request, gen.id, "starting…"), keep_view=True
            )

    async def on_preview(self, gen_id: int, png: bytes) -> None:
        status = self._status.get(gen_id)
        if status is not None:
            status.preview = png

    async def on_progress(self, gen_id: int, step: int, total: int) -> None:
        status = self._status.get(gen_id)
        if status is None or step >= total:  # after the last step the result itself comes
            return
        now = time.monotonic()
        if now - status.last_edit < self.settings.discord.progress_interval:
            return
        status.last_edit = now
        bar = "█" * round(10 * step / max(total, 1))
        text = render.status_text(status.request, gen_id, f"step {step} of {total} `{bar:<10}`")
        await self._edit_status(gen_id, text, keep_view=True)

    async def on_finished(self, gen: Generation, result: GenerationResult) -> None:
        status = self._status.pop(gen.id, None)
        request = status.request if status else gen.request
        if gen.status == Status.CANCELLED:
            if status and status.sent and not status.interaction.is_expired():
                await self._edit_status_of(
                    status, render.status_text(request, gen.id, "cancelled.")
                )
                await self.repos.generations.set_status_line(gen.id, None)
            else:
                await self._remove_status_line(gen.id, status)
            return
        if gen.delivered or gen.deleted:
            if not gen.delivered:  # deleted before it was posted: nothing to post
                await self.repos.generations.mark_delivered(
                    gen.id, channel_id=None, message_id=None
                )
            await self._remove_status_line(gen.id, status)
            return
        try:
            message = await self.post_result(gen, result)
        except (discord.Forbidden, discord.NotFound) as error:
            # No permission to post here, or the channel is gone: retrying will not help.
            log.warning("Cannot post the result of #%d in %s: %s", gen.id, gen.channel_id, error)
            await self.repos.generations.mark_delivered(gen.id, channel_id=None, message_id=None)
            if status and status.sent:
                await self._edit_status_of(
                    status,
                    render.status_text(
                        request,
                        gen.id,
                        "done, but I may not post images in this channel; ask a "
                        "moderator to let me send messages, embed links and attach files here.",
                    ),
                )
            return
        except discord.HTTPException:
            log.exception(
                "Could not post the result of #%d; it will be posted after a restart", gen.id
            )
            return
        await self.repos.generations.mark_delivered(
            gen.id, channel_id=gen.channel_id, message_id=message.id if message else None
        )
        await self._log_outcome(gen, message)
        if message is None:
            return
        # The result message mentions the author; the status line has done its job.
        if status is None:
            await self._remove_status_line(gen.id, None)
        else:
            status.delivered = True
            if status.sent:
                await self._remove_status_line(gen.id, status)

    async def _remove_status_line(self, gen_id: int, status: _Status | None) -> None:
        """Delete a job's status line: through its interaction while that lives, else (after
        15 minutes, or after a restart) as a plain channel message."""
        where = await self.repos.generations.status_line(gen_id)
        deleted = False
        if status is not None and status.sent and not status.interaction.is_expired():
            try:
                await status.interaction.delete_original_response()
                deleted = True
            except discord.HTTPException as error:  # e.g. the token died early
                log.debug("Could not delete the status line of #%d: %s", gen_id, error)
        if not deleted and where is not None:
            channel = self.client.get_partial_messageable(where.channel_id)
            try:
                await channel.get_partial_message(where.message_id).delete()
            except discord.HTTPException as error:
                log.debug("Could not delete the status line of #%d: %s", gen_id, error)
        if where is not None:
            await self.repos.generations.set_status_line(gen_id, None)

    async def _log_outcome(self, gen: Generation, message: discord.Message | None) -> None:
        """Flags and failures get a line in the moderators' log channel, with the link."""
        link = f" {message.jump_url}" if message is not None else ""
        if gen.status == Status.FAILED:
            text = f"❌ #{gen.id} by {user(gen.user_id)} failed: {gen.error}"
        elif gen.flagged:
            flagged = sum(1 for image in gen.images if image.flagged)
            text = (
                f"🛡️ #{gen.id} by {user(gen.user_id)}: {plural(flagged, 'image')} flagged by the "
                "safety checker; see /mod review"
            )
        else:
            return
        await self.modlog.write(gen.guild_id, text + link)

    async def _edit_status(self, gen_id: int, text: str, *, keep_view: bool = False) -> None:
        status = self._status.get(gen_id)
        if status is not None:
            await self._edit_status_of(status, text, keep_view=keep_view, gen_id=gen_id)

    async def _edit_status_of(
        self, status: _Status, text: str, *, keep_view: bool = False, gen_id: int | None = None
    ) -> None:
        if status.interaction.is_expired():
            return
        view = cancel_view(gen_id) if keep_view and gen_id is not None else None
        extra: dict[str, Any] = {}
        if not keep_view:
            extra["attachments"] = []  # a final state (cancelled, failed) keeps no preview
        elif status.preview is not None:
            # A new preview replaces the previous one; edits without one keep it.
            extra["attachments"] = [discord.File(io.BytesIO(status.preview), "preview.jpg")]
            status.preview = None
        try:
            await status.interaction.edit_original_response(
                content=text, view=view, allowed_mentions=NO_PINGS, **extra
            )
        except discord.HTTPException as error:
            log.debug("Status edit failed: %s", error)

    # --- posting results -----------------------------------------------------------------

    async def post_result(
        self, gen: Generation, result: GenerationResult
    ) -> discord.Message | None:
        """The result as a normal channel message (interaction tokens expire after 15 min)."""
        if gen.channel_id is None:
            return None
        channel = self.client.get_partial_messageable(gen.channel_id, guild_id=gen.guild_id)
        author = discord.Object(gen.user_id)
        if gen.status != Status.DONE:
            error = clip(gen.error or result.error or "it failed", 1500)
            return await channel.send(
                f"{user(gen.user_id)} sorry, #{gen.id} could not be made: {error}",
                allowed_mentions=allow_user_ping(author),
            )
        parent = await self.repos.generations.get(gen.parent_id) if gen.parent_id else None
        mode = await self.services.moderation.safety_mode(gen.guild_id)
        images = sort_images(gen.images, mode)
        content = render.result_content(
            gen,
            parent,
            spoilered=len(images.spoilered),
            withheld=len(images.withheld),
            removed=len(images.removed),
        )
        pngs = []
        for image in [*images.public, *images.spoilered]:
            png = await asyncio.to_thread(image.path.read_bytes)
            name = f"easel_{gen.id}_{image.index + 1}.png"
            pngs.append((name, png, image in images.spoilered))
        limit = self._upload_limit(gen.guild_id)
        files = await asyncio.to_thread(render.fit_files, pngs, limit)
        embed = render.recipe_embed(gen, parent, model=self.settings.model.id, images=gen.images)
        if images.public:
            # Embed images are never blurred: only a public image may be the embed's picture.
            embed.set_image(url=f"attachment://{files[0].filename}")
        request = gen.request
        view = result_view(
            gen.id,
            [image.index for image in images.public],
            max_pixels=self.settings.generation.max_pixels,
            size=(request.width, request.height),
        )
        return await channel.send(
            content, embed=embed, files=files, view=view, allowed_mentions=allow_user_ping(author)
        )

    async def repost(self, gen_id: int) -> discord.Message | None:
        """Post a result again as it should look now (after a review decision), then delete
        the message it replaces. None if it could not be posted."""
        gen = await self.repos.generations.get(gen_id)
        if gen is None or gen.deleted or gen.status != Status.DONE:
            return None
        result = await self.repos.images.load_result(gen)
        try:
            message = await self.post_result(gen, result)
        except discord.HTTPException as error:
            log.warning("Could not post #%d again after a review: %s", gen_id, error)
            return None
        if message is None:
            return None
        await self.repos.generations.mark_delivered(
            gen.id, channel_id=message.channel.id, message_id=message.id
        )
        if gen.message_id and gen.message_channel_id and gen.message_id != message.id:
            old = self.client.get_partial_messageable(gen.message_channel_id, guild_id=gen.guild_id)
            try:
                await old.get_partial_message(gen.message_id).delete()
            except discord.NotFound:
                pass
            except discord.HTTPException as error:
                log.warning("Could not delete the old message of #%d: %s", gen_id, error)
        return message

    async def remove_message(self, gen: Generation) -> None:
        """Take a result's message off the channel (it may already be gone)."""
        if not (gen.message_id and gen.message_channel_id):
            return
        channel = self.client.get_partial_messageable(gen.message_channel_id, guild_id=gen.guild_id)
        try:
            await channel.get_partial_message(gen.message_id).delete()
        except discord.NotFound:
            pass

    def _upload_limit(self, guild_id: int | None) -> int:
        guild = self.client.get_guild(guild_id) if guild_id else None
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT
