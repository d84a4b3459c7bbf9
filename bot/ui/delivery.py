"""From an admitted request to a status line, and from a finished job to a message in the
channel.

`Delivery` submits requests through admission (for /imagine, /remix and the buttons), keeps
each job's public status line up to date as it moves through the queue, and posts results,
failures and safety notices. It is the scheduler's listener.

Each result is posted exactly once, whatever Discord or the bot does in between: every post of
a job carries the same nonce (`enforce_nonce`: Discord answers a repeat with the message it
already made), a result the last run may have posted is looked for in the channel before it is
posted again, and a post Discord fails with a 5xx or a dropped connection is retried with
backoff while the bot runs (the next start picks up whatever is left).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import aiohttp
import discord

from bot.db import DiskFullError, Repositories
from bot.domain import Generation, JobOrigin, Status, StatusLine, plural
from bot.queue import QuietListener, Scheduler, WorkerInfo
from bot.services import Services
from bot.services.modlog import ModLog
from bot.services.visibility import sort_images
from bot.settings import Settings
from bot.text import clip, literal, user
from inference.backend import UP, WorkerState
from inference.request import GenerationRequest, GenerationResult

from . import lab as lab_render
from . import render
from .buttons import cancel_view, result_view
from .errors import NO_PINGS, allow_user_ping
from .members import actor_of

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
# Seconds between tries to post a result (or remove a status line) Discord failed; the last
# one repeats for as long as the bot runs.
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# How far back, before a job finished, its result may be found in the channel.
LOOK_BACK = timedelta(minutes=1)

DISK_FULL_LINE = (
    "💾 The server's disk is full: new requests are refused (try again later), queued "
    "jobs wait, and finished images are kept in memory and posted as soon as there is space. "
    "Free some space where Easel keeps its data."
)
DISK_OK_LINE = "💾 There is space on the disk again: saving and posting go on."
HELD = "finished, but the server's disk is full: it is posted here as soon as there is space."


def transient(error: BaseException) -> bool:
    """Worth trying again: Discord's 5xx (and 429), a dropped connection, a full disk."""
    if isinstance(error, discord.HTTPException):
        return error.status >= 500 or error.status == 429
    return isinstance(error, aiohttp.ClientError | OSError | DiskFullError)


def brief(error: BaseException) -> str:
    """One line for the log, without a traceback."""
    if isinstance(error, discord.HTTPException):
        return f"Discord answered {error.status}"
    return f"{type(error).__name__}: {error}"


def result_nonce(gen_id: int, replacing: int | None = None) -> str:
    """The same for every post of one result (across restarts), different for a repost."""
    return f"e{gen_id}" if replacing is None else f"e{gen_id}r{replacing % 10**9}"


def names_result(message: discord.Message, gen_id: int) -> bool:
    """Whether the message is job `gen_id`'s result (its embed is titled #N) or failure."""
    title = f"#{gen_id}"
    return any(embed.title == title for embed in message.embeds) or (
        f"{title} could not be made" in message.content
    )


@dataclasses.dataclass
class _Status:
    """The public status line of one job (the interaction's original response)."""

    interaction: discord.Interaction
    request: GenerationRequest
    last_edit: float = 0.0
    preview: bytes | None = None  # newest preview not yet shown
    sent: bool = False  # the status line exists
    delivered: bool = False  # the result is out: the status line should go
    # Set when the status line is a followup (the interaction was deferred, e.g. to check an
    # upload) rather than the interaction's original response.
    message: discord.WebhookMessage | None = None


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
        self._worker_states: dict[str, WorkerState] = {}
        self.retry_delays = RETRY_DELAYS
        # A job that finished before this run may already be in its channel.
        self._since = repos.db.now()
        self._tasks: set[asyncio.Task[None]] = set()
        self._told_disk_full = False

    async def close(self) -> None:
        """Stop the retries (what they did not post is posted by the next start)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _later(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` in the background (the notifier must not wait for Discord to recover)."""

        async def guarded() -> None:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Background delivery step %s failed", name)

        task = asyncio.create_task(guarded(), name=f"easel-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _delay(self, attempt: int) -> float:
        return self.retry_delays[min(attempt, len(self.retry_delays) - 1)]

    # --- submitting ---------------------------------------------------------------------

    async def submit(
        self,
        interaction: discord.Interaction,
        request: GenerationRequest,
        origin: JobOrigin,
        *,
        upload: bytes | None = None,
    ) -> Generation:
        """Admit the request (a refusal is a UserError the member sees privately), then answer
        with its public status line.

        With `upload` (a checked, re-encoded image), the interaction has been deferred
        privately: the private "thinking…" says the image passed, and the public status line
        follows it."""
        # One quick SQLite write; the answer goes out well inside Discord's 3 seconds.
        gen = await self.services.admission.admit(
            request, origin, actor_of(interaction), upload=upload
        )
        queued = dataclasses.replace(request, seed=gen.recipe.get("seed"))
        status = self._status[gen.id] = _Status(interaction, queued)
        # The status is public, like the queue itself; it goes away when the result is posted.
        view = cancel_view(gen.id)
        if interaction.response.is_done():
            await interaction.edit_original_response(
                content=f"✅ Your image passed the checks; #{gen.id} is in the queue.",
                allowed_mentions=NO_PINGS,
            )
            # Worded after that edit: the job may have started meanwhile.
            status.message = await interaction.followup.send(
                self._queued_text(gen.id, queued), view=view, allowed_mentions=NO_PINGS, wait=True
            )
            status.sent = True
            message_id: int | None = status.message.id
        else:
            callback = await interaction.response.send_message(
                self._queued_text(gen.id, queued), view=view, allowed_mentions=NO_PINGS
            )
            status.sent = True
            message_id = getattr(callback, "message_id", None) or getattr(
                getattr(callback, "resource", None), "id", None
            )
        if message_id and interaction.channel_id:
            # Remembered so the line can still be removed after 15 minutes or a restart.
            line = StatusLine(interaction.channel_id, int(message_id))
            try:
                await self.repos.generations.set_status_line(gen.id, line)
            except DiskFullError as error:  # the job is queued; only this note is lost
                log.warning("Could not note the status line of #%d: %s", gen.id, error)
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
            state = "running" + self._where(gen_id)
        else:
            loading = scheduler.readiness().describe()
            state = (
                f"queued, position {position} of {scheduler.waiting_count}"
                + (f" ({loading})" if loading else "")
                + f", ready in about {render.fmt_seconds(eta)}"
            )
        return render.status_text(request, gen_id, state)

    def _where(self, gen_id: int) -> str:
        """` on cuda:1` when more than one worker serves the queue."""
        worker = self.scheduler.worker_of(gen_id)
        if worker is None or len(self.scheduler.workers.statuses()) < 2:
            return ""
        return f" on {worker.label}"

    # --- scheduler listener ---------------------------------------------------------------

    async def on_started(self, gen: Generation) -> None:
        status = self._status.get(gen.id)
        if status is not None:
            # The first progress edit comes one interval after this one.
            status.last_edit = time.monotonic()
            state = f"starting{self._where(gen.id)}…"
            await self._edit_status(
                gen.id, render.status_text(status.request, gen.id, state), keep_view=True
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
        state = f"step {step} of {total} `{bar:<10}`{self._where(gen_id)}"
        text = render.status_text(status.request, gen_id, state)
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
        # A job the last run finished may have been posted just before it died.
        look_first = gen.finished_at is not None and gen.finished_at.timestamp() < self._since
        if not await self._try_to_deliver(gen, result, status, look_first=look_first):
            if status is not None and status.sent:
                await self._edit_status_of(
                    status, render.status_text(request, gen.id, "done; posting it…")
                )
            self._later(f"post-{gen.id}", lambda: self._deliver_until_done(gen.id, status))

    async def _try_to_deliver(
        self,
        gen: Generation,
        result: GenerationResult,
        status: _Status | None,
        *,
        look_first: bool,
    ) -> bool:
        """Post (or find) the result and record it; False if Discord failed for now."""
        try:
            message = await self._find_posted(gen) if look_first else None
            if message is None:
                message = await self.post_result(gen, result)
        except (discord.Forbidden, discord.NotFound) as error:
            # No permission to post here, or the channel is gone: retrying will not help.
            log.warning("Cannot post the result of #%d in %s: %s", gen.id, gen.channel_id, error)
            await self._record_delivery(gen.id, None, None)
            if status and status.sent:
                await self._edit_status_of(
                    status,
                    render.status_text(
                        status.request,
                        gen.id,
                        "done, but I may not post images in this channel; ask a "
                        "moderator to let me send messages, embed links and attach files here.",
                    ),
                )
            return True
        except Exception as error:
            if not transient(error):
                raise
            log.warning("Could not post the result of #%d yet (%s)", gen.id, brief(error))
            return False
        await self._record_delivery(gen.id, gen.channel_id, message.id if message else None)
        await self._log_outcome(gen, message)
        if message is None:
            return True
        # The result message mentions the author; the status line has done its job.
        if status is None:
            await self._remove_status_line(gen.id, None)
        else:
            status.delivered = True
            if status.sent:
                await self._remove_status_line(gen.id, status)
        return True

    async def _deliver_until_done(self, gen_id: int, status: _Status | None) -> None:
        """Try again with backoff until the result is out (or needs no posting any more)."""
        for attempt in itertools.count():
            await asyncio.sleep(self._delay(attempt))
            gen = await self.repos.generations.get(gen_id)
            if gen is None or gen.delivered:
                return
            if gen.deleted:  # deleted before it was posted: nothing to post
                await self._record_delivery(gen_id, None, None)
                await self._remove_status_line(gen_id, status)
                return
            result = await self.repos.images.load_result(gen)
            # An earlier try may have reached Discord after all (a 5xx after the commit).
            if await self._try_to_deliver(gen, result, status, look_first=True):
                log.info("Posted the result of #%d after %d retries", gen_id, attempt + 1)
                return

    async def _find_posted(self, gen: Generation) -> discord.Message | None:
        """The job's result (or failure notice) if it is already in its channel."""
        me = self.client.user
        if gen.channel_id is None or me is None:
            return None
        moment = gen.finished_at or gen.created_at
        channel = self.client.get_partial_messageable(gen.channel_id, guild_id=gen.guild_id)
        try:
            async for message in channel.history(
                limit=100, after=moment - LOOK_BACK, oldest_first=True
            ):
                if message.author.id == me.id and names_result(message, gen.id):
                    log.info("The result of #%d was already posted (%s)", gen.id, message.id)
                    return message
        except discord.Forbidden:  # no Read Message History: the nonce still guards the post
            return None
        return None

    async def _record_delivery(
        self, gen_id: int, channel_id: int | None, message_id: int | None
    ) -> None:
        """mark_delivered; while the disk is full, again until it is recorded."""
        try:
            await self.repos.generations.mark_delivered(
                gen_id, channel_id=channel_id, message_id=message_id
            )
        except DiskFullError:

            async def again() -> None:
                for attempt in itertools.count():
                    await asyncio.sleep(self._delay(attempt))
                    with contextlib.suppress(DiskFullError):
                        await self.repos.generations.mark_delivered(
                            gen_id, channel_id=channel_id, message_id=message_id
                        )
                        return

            self._later(f"record-{gen_id}", again)

    async def on_disk_full(self, held: list[int]) -> None:
        if not self._told_disk_full:
            self._told_disk_full = True
            for guild in self.client.guilds:
                await self.modlog.write(guild.id, DISK_FULL_LINE)
        for gen_id in held:
            status = self._status.get(gen_id)
            if status is not None and status.sent:
                await self._edit_status_of(status, render.status_text(status.request, gen_id, HELD))

    async def on_disk_ok(self) -> None:
        if self._told_disk_full:
            self._told_disk_full = False
            for guild in self.client.guilds:
                await self.modlog.write(guild.id, DISK_OK_LINE)

    async def on_worker(self, worker: WorkerInfo, workers: list[WorkerInfo]) -> None:
        """A worker went down, is restarting, or is (back) up: one line in the log channels."""
        before = self._worker_states.get(worker.name)
        self._worker_states[worker.name] = worker.state
        name = f"`{worker.status.label}`"
        if worker.state == WorkerState.DOWN:
            text = f"⚠️ Image worker {name} is down: {clip(worker.status.detail, 300)}"
        elif worker.state == WorkerState.LOADING and before in UP:
            why = f" ({worker.status.detail})" if worker.status.detail else ""
            text = f"🔄 Image worker {name} stopped{why}; restarting it"
        elif worker.state == WorkerState.LOADING and before is None:
            text = f"➕ Image worker {name} joined; loading the model"
        elif worker.state == WorkerState.IDLE and before in (WorkerState.LOADING, WorkerState.DOWN):
            text = f"✅ Image worker {name} is ready"
        else:
            return  # idle ↔ running: /queue shows that
        if self.client.is_ready():  # before that, start-up is in the console log
            await self.modlog.broadcast(f"{text}. Workers: {render.workers_line(workers)}")

    async def _remove_status_line(self, gen_id: int, status: _Status | None) -> None:
        """Delete a job's status line: through its interaction while that lives, else (after
        15 minutes, or after a restart) as a plain channel message. If Discord fails for now,
        again in the background: a status line must not stay behind its result."""
        if await self._try_to_remove_status_line(gen_id, status):
            return

        async def again() -> None:
            for attempt in itertools.count():
                await asyncio.sleep(self._delay(attempt))
                if await self._try_to_remove_status_line(gen_id, status):
                    return

        self._later(f"status-{gen_id}", again)

    async def _try_to_remove_status_line(self, gen_id: int, status: _Status | None) -> bool:
        """True once the line is gone (or was never noted); False on a failure worth retrying."""
        where = await self.repos.generations.status_line(gen_id)
        deleted = False
        retry = False
        if status is not None and status.sent and not status.interaction.is_expired():
            try:
                if status.message is not None:
                    await status.message.delete()
                else:
                    await status.interaction.delete_original_response()
                deleted = True
            except discord.NotFound:
                deleted = True
            except Exception as error:  # e.g. the token died early, or a 5xx
                if not transient(error) and not isinstance(error, discord.HTTPException):
                    raise
                log.debug("Could not delete the status line of #%d: %s", gen_id, error)
                retry = transient(error)
        if not deleted and where is not None:
            channel = self.client.get_partial_messageable(where.channel_id)
            try:
                await channel.get_partial_message(where.message_id).delete()
                deleted = True
            except discord.NotFound:
                deleted = True
            except Exception as error:
                if not transient(error) and not isinstance(error, discord.HTTPException):
                    raise
                log.debug("Could not delete the status line of #%d: %s", gen_id, error)
                retry = transient(error)
        if not deleted and retry:
            return False
        if where is not None:
            with contextlib.suppress(DiskFullError):  # a stale note only costs a 404 later
                await self.repos.generations.set_status_line(gen_id, None)
        return True

    async def _log_outcome(self, gen: Generation, message: discord.Message | None) -> None:
        """Flags and failures get a line in the moderators' log channel, with the link."""
        link = f" {message.jump_url}" if message is not None else ""
        if gen.status == Status.FAILED:
            text = f"❌ #{gen.id} by {user(gen.user_id)} failed: {literal(gen.error or '', 500)}"
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
        # Not before the line exists: with an upload, the original response is the member's
        # private "passed the checks" note, which a "starting…" must not overwrite.
        if not status.sent or status.interaction.is_expired():
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
            if status.message is not None:
                await status.message.edit(
                    content=text, view=view, allowed_mentions=NO_PINGS, **extra
                )
            else:
                await status.interaction.edit_original_response(
                    content=text, view=view, allowed_mentions=NO_PINGS, **extra
                )
        except (discord.HTTPException, aiohttp.ClientError, OSError) as error:
            log.debug("Status edit failed: %s", error)  # the next edit (or removal) follows

    # --- posting results -----------------------------------------------------------------

    async def post_result(
        self, gen: Generation, result: GenerationResult, *, nonce: str | None = None
    ) -> discord.Message | None:
        """The result as a normal channel message (interaction tokens expire after 15 min).

        Sent with `nonce` (default: the job's own, `result_nonce`) and `enforce_nonce`, so a
        post repeated after a lost answer returns the message Discord already made.
        """
        if gen.channel_id is None:
            return None
        nonce = nonce or result_nonce(gen.id)
        channel = self.client.get_partial_messageable(gen.channel_id, guild_id=gen.guild_id)
        author = discord.Object(gen.user_id)
        if gen.status != Status.DONE:
            error = clip(gen.error or result.error or "it failed", 1500)
            return await channel.send(
                f"{user(gen.user_id)} sorry, #{gen.id} could not be made: {error}",
                allowed_mentions=allow_user_ping(author),
                nonce=nonce,
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
        record = await self.repos.lab.get(gen.id)
        if gen.kind.is_lab:
            content += "\n🔬 " + lab_render.caption(gen, record)
        pngs = []
        for image in [*images.public, *images.spoilered]:
            png = await asyncio.to_thread(image.path.read_bytes)
            name = f"easel_{gen.id}_{image.index + 1}.png"
            pngs.append((name, png, image in images.spoilered))
        limit = self._upload_limit(gen.guild_id)
        files = await asyncio.to_thread(render.fit_files, pngs, limit)
        if gen.kind.is_lab:
            embed = lab_render.lab_embed(gen, record, model=self.settings.model.id)
            if record is not None and images.public:
                # The lab's extra files (the film) were checked with its picture: shown with it.
                files += await asyncio.to_thread(
                    lab_render.extra_files, gen.id, record, limit, pngs
                )
        else:
            embed = render.recipe_embed(
                gen, parent, model=self.settings.model.id, images=gen.images
            )
            shown = [image.index for image in images.public]
            line = lab_render.clip_line(record.clip_scores, shown) if record else None
            if line:
                embed.add_field(name="CLIP", value=line, inline=False)
        if images.public:
            # Embed images are never blurred: only a public image may be the embed's picture.
            embed.set_image(url=f"attachment://{files[0].filename}")
        request = gen.request
        view = result_view(
            gen.id,
            [image.index for image in images.public],
            can_derive=not gen.kind.is_lab,
            max_pixels=self.settings.generation.max_pixels,
            size=(request.width, request.height),
            lab=not gen.kind.is_lab,
        )
        return await channel.send(
            content,
            embed=embed,
            files=files,
            view=view,
            allowed_mentions=allow_user_ping(author),
            nonce=nonce,
        )

    async def repost(self, gen_id: int) -> discord.Message | None:
        """Post a result again as it should look now (after a review decision), then delete
        the message it replaces. None if it could not be posted."""
        gen = await self.repos.generations.get(gen_id)
        if gen is None or gen.deleted or gen.status != Status.DONE:
            return None
        result = await self.repos.images.load_result(gen)
        try:
            # Its own nonce: this must be a new message, not the one it replaces.
            message = await self.post_result(
                gen, result, nonce=result_nonce(gen.id, replacing=gen.message_id or 0)
            )
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
