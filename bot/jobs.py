"""From an interaction to a queued job, and from a finished job to a message in the channel.

`JobService` validates and submits requests (for /imagine, /remix and the buttons), keeps each
author's private status message up to date as their job moves through the queue, and posts
results, failures and safety notices. It is the scheduler's listener.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import math
import re
import time
from typing import TYPE_CHECKING, Any

import discord

from inference.request import GenerationRequest, RequestError, validate

from . import render
from .errors import NO_PINGS, UserError, allow_user_ping, reply
from .permissions import interaction_is_moderator
from .scheduler import QueueRefused
from .store import Generation, StoreError
from .views import RemixModal, cancel_view, result_view
from .wordfilter import find_banned

if TYPE_CHECKING:
    from inference.request import GenerationResult

    from .client import EaselBot

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


class JobService:
    def __init__(self, bot: EaselBot):
        self.bot = bot
        self._status: dict[int, _Status] = {}
        self._prepared: set[int] = set()  # servers whose word list and settings are seeded

    @property
    def settings(self):
        return self.bot.settings

    # --- submitting ---------------------------------------------------------------------

    def base_request(self, **values: Any) -> GenerationRequest:
        g = self.settings.generation
        request = GenerationRequest(
            prompt="",
            steps=g.default_steps,
            guidance=g.default_guidance,
            count=g.default_count,
            sampler=g.default_sampler,
            model=self.settings.model.id,
            width=self.bot.native_size,
            height=self.bot.native_size,
        )
        return dataclasses.replace(request, **{k: v for k, v in values.items() if v is not None})

    async def submit(
        self,
        interaction: discord.Interaction,
        request: GenerationRequest,
        *,
        kind: str = "imagine",
        parent: Generation | None = None,
        parent_index: int | None = None,
    ) -> Generation | None:
        """Validate, check the word list, queue; answer the member privately either way."""
        where = dict(
            user_id=interaction.user.id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            kind=kind,
            parent_id=parent.id if parent else None,
            parent_image_index=parent_index,
            user_name=interaction.user.display_name,
        )
        try:
            request = validate(request, self.settings.limits)
            refuse_mentions(request)
        except RequestError as error:
            await self.bot.store.log_refusal(
                request, reason="bad_input", message=str(error), **where
            )
            await self.bot.audit_line(interaction, f"refused (bad input): {error}")
            raise UserError(str(error)) from None
        banned = await self.banned_word(interaction.guild_id, request)
        if banned is not None:
            message = (
                "Your prompt contains a word this server does not allow; rephrase it and try again."
            )
            gen = await self.bot.store.log_refusal(
                request, reason="banned_word", message=message, **where
            )
            await self.bot.audit_line(
                interaction,
                f"refused #{gen.id} (banned word {banned!r}): {render.quote(request.prompt)[:200]}",
            )
            raise UserError(message)
        # One quick SQLite write; the answer goes out well inside Discord's 3 seconds, and a
        # refusal can still be private.
        try:
            gen = await self.bot.scheduler.submit(request, **where)
        except QueueRefused as refused:
            await self.bot.audit_line(
                interaction, f"refused ({refused.reason}): {render.quote(request.prompt)[:200]}"
            )
            raise UserError(refused.message) from None
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
            where = f"{interaction.channel_id}:{message_id}"
            await self.bot.store.set_state(status_key(gen.id), where)
        if status.delivered:  # a fast job finished before its status line was even sent
            await self._remove_status_line(gen.id, status)
        line = f"queued #{gen.id} ({kind}): {render.quote(request.prompt)[:300]}"
        if parent is not None:
            line += f" — from #{parent.id}"
        await self.bot.audit_line(interaction, line)
        return gen

    async def banned_word(self, guild_id: int | None, request: GenerationRequest) -> str | None:
        if guild_id is None:
            words = list(self.settings.moderation.banned_words)
        else:
            words = await self.server_words(guild_id)
        return find_banned(f"{request.prompt}\n{request.negative}", words)

    async def prepare_guild(self, guild_id: int) -> None:
        """The first time Easel sees a server, copy in the configured default banned words and
        safety mode; from then on the moderators' edits (/mod words, /mod safety) stick."""
        if guild_id in self._prepared:
            return
        moderation = self.settings.moderation
        seeded = await self.bot.store.seed_banned_words(guild_id, moderation.banned_words)
        if seeded and moderation.safety_mode != "withhold":
            await self.bot.store.set_safety_mode(guild_id, moderation.safety_mode)
        self._prepared.add(guild_id)

    async def server_words(self, guild_id: int) -> list[str]:
        """A server's banned words (the configured defaults seeded in on first use)."""
        await self.prepare_guild(guild_id)
        return await self.bot.store.banned_words(guild_id)

    def _queued_text(self, gen_id: int, request: GenerationRequest) -> str:
        scheduler = self.bot.scheduler
        position = scheduler.position(gen_id)
        eta = scheduler.eta_seconds(gen_id)
        if position is None:
            state = "starting…"
        elif position == 0:
            state = "running"
        else:
            state = (
                f"queued, position {position} of {scheduler.waiting_count}, "
                f"ready in about {render.fmt_seconds(eta)}"
            )
        return render.status_text(request, gen_id, state)

    # --- scheduler listener ---------------------------------------------------------------

    async def on_started(self, gen: Generation) -> None:
        status = self._status.get(gen.id)
        if status is not None:
            await self._edit_status(
                gen.id, render.status_text(status.request, gen.id, "starting…"), keep_view=True
            )

    async def on_preview(self, gen_id: int, png: bytes) -> None:
        status = self._status.get(gen_id)
        if status is not None:
            status.preview = png

    async def on_progress(self, gen_id: int, step: int, total: int) -> None:
        status = self._status.get(gen_id)
        if status is None:
            return
        now = time.monotonic()
        if now - status.last_edit < self.settings.discord.progress_interval and step < total:
            return
        status.last_edit = now
        bar = "█" * round(10 * step / max(total, 1))
        text = render.status_text(status.request, gen_id, f"step {step} of {total} `{bar:<10}`")
        await self._edit_status(gen_id, text, keep_view=True)

    async def on_finished(self, gen: Generation, result: GenerationResult) -> None:
        status = self._status.pop(gen.id, None)
        request = status.request if status else gen.request
        if gen.status == "cancelled":
            if status and status.sent and not status.interaction.is_expired():
                await self._edit_status_of(
                    status, render.status_text(request, gen.id, "cancelled.")
                )
                await self.bot.store.set_state(status_key(gen.id), None)
            else:
                await self._remove_status_line(gen.id, status)
            return
        if gen.delivered or gen.deleted:
            if not gen.delivered:  # deleted before it was posted: nothing to post
                await self.bot.store.mark_delivered(gen.id, channel_id=None, message_id=None)
            await self._remove_status_line(gen.id, status)
            return
        try:
            message = await self.post_result(gen, result)
        except (discord.Forbidden, discord.NotFound) as error:
            # No permission to post here, or the channel is gone: retrying will not help.
            log.warning("Cannot post the result of #%d in %s: %s", gen.id, gen.channel_id, error)
            await self.bot.store.mark_delivered(gen.id, channel_id=None, message_id=None)
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
        await self.bot.store.mark_delivered(
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
        store = self.bot.store
        where = await store.get_state(status_key(gen_id))
        deleted = False
        if status is not None and status.sent and not status.interaction.is_expired():
            try:
                await status.interaction.delete_original_response()
                deleted = True
            except discord.HTTPException as error:  # e.g. the token died early
                log.debug("Could not delete the status line of #%d: %s", gen_id, error)
        if not deleted and where:
            channel_id, message_id = (int(part) for part in where.split(":"))
            channel = self.bot.get_partial_messageable(channel_id)
            try:
                await channel.get_partial_message(message_id).delete()
            except discord.HTTPException as error:
                log.debug("Could not delete the status line of #%d: %s", gen_id, error)
        if where:
            await store.set_state(status_key(gen_id), None)

    async def _log_outcome(self, gen: Generation, message: discord.Message | None) -> None:
        """Flags and failures get a line in the moderators' log channel, with the link."""
        link = f" {message.jump_url}" if message is not None else ""
        if gen.status == "failed":
            text = f"❌ #{gen.id} by <@{gen.user_id}> failed: {gen.error}"
        elif gen.flagged:
            flagged = sum(1 for image in gen.images if image.flagged)
            text = (
                f"🛡️ #{gen.id} by <@{gen.user_id}>: {_count(flagged, 'image')} flagged by the "
                "safety checker; see /mod review"
            )
        else:
            return
        await self.bot.audit_line(None, text + link, guild_id=gen.guild_id)

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
            extra["attachments"] = [discord.File(io.BytesIO(status.preview), "preview.png")]
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
        channel = self.bot.get_partial_messageable(gen.channel_id, guild_id=gen.guild_id)
        author = discord.Object(gen.user_id)
        if gen.status != "done":
            error = render.clip(gen.error or result.error or "it failed", 1500)
            return await channel.send(
                f"<@{gen.user_id}> sorry, #{gen.id} could not be made: {error}",
                allowed_mentions=allow_user_ping(author),
            )
        parent = await self.bot.store.get(gen.parent_id) if gen.parent_id else None
        mode = "withhold"
        if gen.guild_id is not None:
            mode = (await self.bot.store.guild_settings(gen.guild_id)).safety_mode
        shown, spoilered, withheld = [], [], []
        for image in gen.images:
            # In spoiler mode a flagged image stays behind its spoiler, released or not.
            if image.public and not (mode == "spoiler" and image.flagged):
                shown.append(image)
            elif mode == "spoiler" and image.review != "removed":
                spoilered.append(image)
            else:
                withheld.append(image)
        # The prompt in the content shows in notifications; the embed holds the full recipe.
        prompt = discord.utils.escape_markdown(render.clip(render.quote(gen.prompt), 120))
        content = f"<@{gen.user_id}> **{prompt}**"
        line = render.lineage_line(gen, parent)
        if line:
            content += f" — {line}"
        if spoilered:
            content += (
                "\n⚠️ Content warning: the safety checker flagged "
                f"{_count(len(spoilered), 'image')}; it is behind a spoiler."
            )
        removed = [image for image in withheld if image.review == "removed"]
        pending = len(withheld) - len(removed)
        if pending:
            content += (
                f"\n🛡️ {_count(pending, 'image')} withheld for moderator review "
                "(the safety checker flagged it)."
            )
        if removed:
            content += f"\n🛡️ {_count(len(removed), 'image')} removed by a moderator."
        pngs = []
        for image in [*shown, *spoilered]:
            png = await asyncio.to_thread(image.path.read_bytes)
            name = f"easel_{gen.id}_{image.index + 1}.png"
            pngs.append((name, png, image in spoilered))
        limit = self._upload_limit(gen.guild_id)
        files = await asyncio.to_thread(render.fit_files, pngs, limit)
        embed = render.recipe_embed(gen, parent, model=self.settings.model.id, images=gen.images)
        if shown:
            # Embed images are never blurred: only a public image may be the embed's picture.
            embed.set_image(url=f"attachment://{files[0].filename}")
        request = gen.request
        view = result_view(
            gen.id,
            [image.index for image in shown],
            max_pixels=self.settings.generation.max_pixels,
            size=(request.width, request.height),
        )
        return await channel.send(
            content, embed=embed, files=files, view=view, allowed_mentions=allow_user_ping(author)
        )

    def _upload_limit(self, guild_id: int | None) -> int:
        guild = self.bot.get_guild(guild_id) if guild_id else None
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    # --- actions on a result ---------------------------------------------------------------

    async def here(self, interaction: discord.Interaction, gen_id: int) -> Generation:
        """Generation #N of this server: ids from other servers are as good as unknown."""
        gen = await self.bot.store.get(gen_id)
        if gen is None or gen.guild_id != interaction.guild_id:
            raise UserError(f"There is no image #{gen_id}.")
        return gen

    async def source(
        self, interaction: discord.Interaction, gen_id: int, index: int | None = None
    ) -> Generation:
        """A generation others may build on, or a UserError saying why not."""
        gen = await self.here(interaction, gen_id)
        if gen.status == "blocked":
            raise UserError(f"There is no image #{gen_id}.")
        if gen.deleted:
            raise UserError(f"#{gen_id} was deleted, so it cannot be remixed.")
        if gen.status != "done":
            raise UserError(f"#{gen_id} has no finished images to build on yet.")
        if index is not None:
            image = gen.image(index)
            if image is None:
                raise UserError(f"#{gen_id} has no image {index + 1}.")
            if not image.public:
                raise UserError(
                    f"Image {index + 1} of #{gen_id} is withheld for moderator "
                    "review, so it cannot be remixed."
                )
        elif gen.images and not any(image.public for image in gen.images):
            raise UserError(f"#{gen_id} is withheld for moderator review, so it cannot be remixed.")
        return gen

    async def reroll(self, interaction: discord.Interaction, gen_id: int) -> None:
        """🎲 Same recipe, a new seed; the job is the presser's."""
        parent = await self.source(interaction, gen_id)
        request = dataclasses.replace(parent.request, seed=None, job_id="", init_image=None)
        if request.mode != "txt2img":
            request = dataclasses.replace(
                request,
                init_image=await self._grandparent_png(interaction, parent),
            )
        await self.submit(interaction, request, kind="reroll", parent=parent)

    async def vary(self, interaction: discord.Interaction, gen_id: int, index: int) -> None:
        """🔀 Image-to-image from one image, a new seed."""
        parent = await self.source(interaction, gen_id, index)
        image = parent.image(index)
        request = dataclasses.replace(
            parent.request,
            mode="img2img",
            seed=None,
            count=1,
            job_id="",
            init_image=await self._source_png(gen_id, index),
            strength=self.settings.generation.vary_strength,
            steps=enough_steps(parent.request.steps, self.settings.generation.vary_strength),
            width=image.width or parent.request.width,
            height=image.height or parent.request.height,
        )
        await self.submit(interaction, request, kind="vary", parent=parent, parent_index=index)

    async def upscale(self, interaction: discord.Interaction, gen_id: int, index: int) -> None:
        """⬆️ Twice the size of one image: resize, then a light image-to-image pass."""
        parent = await self.source(interaction, gen_id, index)
        image = parent.image(index)
        width = (image.width or parent.request.width) * 2
        height = (image.height or parent.request.height) * 2
        request = dataclasses.replace(
            parent.request,
            mode="upscale",
            seed=image.seed,
            count=1,
            job_id="",
            init_image=await self._source_png(gen_id, index),
            width=width,
            height=height,
            strength=self.settings.generation.upscale_strength,
            steps=enough_steps(parent.request.steps, self.settings.generation.upscale_strength),
        )
        await self.submit(interaction, request, kind="upscale", parent=parent, parent_index=index)

    async def open_remix_modal(self, interaction: discord.Interaction, gen_id: int) -> None:
        """✏️ A modal with the prompt prefilled; same seed and settings on submit."""
        parent = await self.source(interaction, gen_id)
        await interaction.response.send_modal(
            RemixModal(
                self.bot,
                gen_id,
                parent.prompt,
                parent.negative,
                self.settings.generation.max_prompt_chars,
            )
        )

    async def remix(self, interaction: discord.Interaction, gen_id: int, **overrides: Any) -> None:
        """Same seed and settings as the source, with a new prompt and any overrides."""
        parent = await self.source(interaction, gen_id)
        values = {k: v for k, v in overrides.items() if v is not None}
        request = dataclasses.replace(parent.request, job_id="", init_image=None, **values)
        if request.mode != "txt2img":
            request = dataclasses.replace(
                request,
                init_image=await self._grandparent_png(interaction, parent),
            )
        await self.submit(interaction, request, kind="remix", parent=parent)

    async def _grandparent_png(self, interaction: discord.Interaction, parent: Generation) -> bytes:
        """The image a variation or upscale was made from, if it may still be built on."""
        if parent.parent_id is None or parent.parent_image_index is None:
            raise UserError("The source image of this remix is gone.")
        await self.source(interaction, parent.parent_id, parent.parent_image_index)
        return await self._source_png(parent.parent_id, parent.parent_image_index)

    async def _source_png(self, gen_id: int | None, index: int | None) -> bytes:
        if gen_id is None or index is None:
            raise UserError("The source image of this remix is gone.")
        try:
            return await self.bot.store.read_image(gen_id, index)
        except StoreError as error:
            raise UserError(str(error)) from None

    async def show_info(self, interaction: discord.Interaction, gen_id: int) -> None:
        lineage = self.bot.get_cog("Lineage")
        if lineage is None:
            raise UserError("Info is not available right now.")
        await lineage.send_info(interaction, gen_id)

    async def delete(self, interaction: discord.Interaction, gen_id: int) -> None:
        """🗑 Remove a result from the channel (author or moderator); the log keeps it."""
        gen = await self.here(interaction, gen_id)
        moderator = interaction_is_moderator(interaction, self.settings.moderation)
        if interaction.user.id != gen.user_id and not moderator:
            raise UserError("Only the author of an image or a moderator can delete it.")
        if gen.deleted:
            raise UserError(f"#{gen_id} is already deleted.")
        await self.bot.store.mark_deleted(gen_id, by=interaction.user.id)
        if not gen.is_final:
            await self.bot.scheduler.cancel(gen_id)  # deleting a waiting job stops it
        if gen.message_id and gen.message_channel_id:
            channel = self.bot.get_partial_messageable(
                gen.message_channel_id, guild_id=gen.guild_id
            )
            try:
                await channel.get_partial_message(gen.message_id).delete()
            except discord.NotFound:
                pass
        if moderator and interaction.user.id != gen.user_id:
            await self.bot.store.add_audit(
                actor_id=interaction.user.id,
                action="remove",
                guild_id=gen.guild_id,
                target_user_id=gen.user_id,
                target_generation_id=gen.id,
                reason="deleted from the channel",
            )
        await self.bot.audit_line(interaction, f"deleted #{gen_id}")
        await reply(interaction, f"Deleted #{gen_id} from the channel; the log keeps its record.")

    async def cancel_from_button(self, interaction: discord.Interaction, gen_id: int) -> None:
        gen = await self.bot.store.get(gen_id)
        if gen is None or gen.user_id != interaction.user.id:
            raise UserError("Only the author of a job can cancel it.")
        if not await self.bot.scheduler.cancel(gen_id, user_id=interaction.user.id):
            raise UserError(f"#{gen_id} is no longer waiting or running.")
        await interaction.response.edit_message(
            content=render.status_text(gen.request, gen_id, "cancelled."),
            view=None,
            attachments=[],  # no preview left behind
            allowed_mentions=NO_PINGS,
        )


def status_key(gen_id: int) -> str:
    """Where a job's public status line is (channel:message), in the store's state table."""
    return f"status_line:{gen_id}"


def enough_steps(steps: int, strength: float) -> int:
    """Image-to-image runs only steps × strength of them: keep at least one."""
    return max(steps, math.ceil(1 / strength))


MENTION = re.compile(r"@(everyone|here)\b|<@[!&]?\d+>|<#\d+>", re.IGNORECASE)


def refuse_mentions(request: GenerationRequest) -> None:
    """Prompts are posted with every result: mentions in them would be noise at best."""
    for text in (request.prompt, request.negative):
        found = MENTION.search(text or "")
        if found:
            raise RequestError(
                f"Prompts cannot contain mentions like {found.group(0)}; remove it and try again."
            )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
