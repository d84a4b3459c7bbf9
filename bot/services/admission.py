"""Admission: the one place that decides whether a request joins the queue, and that logs
every refusal (with its reason, for /mod log) and every acceptance.

A request is refused, in this order, for bad input (validation, mentions), a banned word, an
uploaded image the safety checker flagged, a banned member, a paused queue, too many waiting
jobs, the daily quota, or an unknown source. A request that came with an upload keeps it (the
re-encoded file) whether it was accepted or refused, so moderators see what was sent.
While the disk is full nothing is queued: `DiskFullError` (which the log cannot hold either).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from bot.db import DiskFullError, Repositories, StoreError
from bot.domain import Actor, Generation, JobOrigin, RefusalReason, UserError
from bot.queue import Scheduler
from bot.settings import Settings
from bot.text import literal
from inference.request import GenerationRequest, RequestError, validate

from .modlog import ModLog
from .uploads import FLAGGED, Screener
from .words import WordLists

log = logging.getLogger(__name__)

# Anywhere, not only as a word: Discord shows the `@everyone` of `@everyone_` or `x@herex` as a
# mention too.
MENTION = re.compile(r"@(everyone|here)|<@[!&]?\d+>|<#\d+>", re.IGNORECASE)
BANNED_WORD = "Your prompt contains a word this server does not allow; rephrase it and try again."


class Refused(UserError):
    """A request admission turned down: `message` is the member's sentence, `reason` the code,
    `generation` the logged refusal."""

    def __init__(self, reason: RefusalReason, message: str, generation: Generation | None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.generation = generation


def refuse_mentions(request: GenerationRequest) -> None:
    """Prompts are posted with every result: mentions in them would be noise at best."""
    for text in (request.prompt, request.negative):
        found = MENTION.search(text or "")
        if found:
            raise RequestError(
                # In a code span the token shows as typed, not as a mention.
                f"Prompts cannot contain mentions like `{found.group(0)}`; remove it and try again."
            )


class Admission:
    def __init__(
        self,
        settings: Settings,
        repos: Repositories,
        scheduler: Scheduler,
        words: WordLists,
        modlog: ModLog,
        screener: Screener | None = None,
    ):
        self.settings = settings
        self.repos = repos
        self.scheduler = scheduler
        self.words = words
        self.modlog = modlog
        self.screener = screener
        # The checks against the queue and the write that joins it happen as one step.
        self._lock = asyncio.Lock()

    async def admit(
        self,
        request: GenerationRequest,
        origin: JobOrigin,
        actor: Actor | None = None,
        *,
        upload: bytes | None = None,
    ) -> Generation:
        """Queue the request or raise `Refused` (logged, with one sentence for the member).

        `upload`: the member's uploaded image, already checked and re-encoded
        (`bot.services.uploads.prepare_upload`); the job starts from it once the safety checker
        has passed it.
        """
        if upload is not None:
            request = dataclasses.replace(request, init_image=upload)
        try:
            request = validate(request, self.settings.limits)
            refuse_mentions(request)
        except RequestError as error:
            line = f"refused (bad input): {error}"
            await self._refuse(
                request, origin, actor, RefusalReason.BAD_INPUT, str(error), line, upload=upload
            )
        # While this is decided, an idle worker may hold its batch open for it a moment.
        with self.scheduler.arriving(request):
            gen = await self._admit_valid(request, origin, actor, upload)
        if upload is not None:
            gen = await self.repos.generations.attach_upload(gen.id, upload)
        line = f"queued #{gen.id} ({origin.kind}): {literal(request.prompt, 300)}"
        if origin.parent_id is not None:
            line += f" — from #{origin.parent_id}"
        if upload is not None:
            line += " — from an uploaded image"
        await self.modlog.write(origin.guild_id, line, actor)
        return gen

    async def _admit_valid(
        self,
        request: GenerationRequest,
        origin: JobOrigin,
        actor: Actor | None,
        upload: bytes | None,
    ) -> Generation:
        """The checks past validation (words, disk, the upload's screening, the queue's
        rules), then the submit."""
        banned = await self.words.banned_in(origin.guild_id, request)
        if banned is not None:
            line = f"(banned word “{literal(banned)}”): {literal(request.prompt, 200)}"
            await self._refuse(
                request, origin, actor, RefusalReason.BANNED_WORD, BANNED_WORD, line, upload=upload
            )
        if self.scheduler.disk_full:
            # Its image could not be saved; the jobs already queued keep their places.
            raise DiskFullError("The disk is full; no new jobs until there is space.")
        if upload is not None:
            await self._screen(request, origin, actor, upload)
        async with self._lock:
            reason, message = await self._queue_refusal(origin)
            if reason is not None:
                await self._refuse(request, origin, actor, reason, message, upload=upload)
            try:
                gen = await self.scheduler.submit(request, origin)
            except DiskFullError as error:
                self.scheduler.report_disk_full(error)
                raise
            except StoreError as error:
                if origin.parent_id is None:
                    raise
                # The source generation is unknown: a refusal the member can act on.
                message = f"{error} Check the number and try again."
                await self._refuse(request, origin, actor, RefusalReason.BAD_INPUT, message)
        return gen

    async def _screen(
        self, request: GenerationRequest, origin: JobOrigin, actor: Actor | None, upload: bytes
    ) -> None:
        """The safety checker looks at the upload before any work is done on it; a flagged one
        is refused and waits in /mod review like a flagged result."""
        if self.screener is None:
            raise UserError("Uploads cannot be checked here, so they are not taken.")
        try:
            (flagged,) = await self.screener.screen([upload])
        except Exception:
            log.exception("The safety checker could not look at an upload")
            raise UserError(
                "That image could not be checked just now; try again in a minute."
            ) from None
        if flagged:
            await self._refuse(
                request,
                origin,
                actor,
                RefusalReason.FLAGGED_UPLOAD,
                FLAGGED,
                f"(upload flagged by the safety checker; see /mod review): "
                f"{literal(request.prompt, 200)}",
                upload=upload,
                flagged=True,
            )

    async def refuse(
        self,
        request: GenerationRequest,
        origin: JobOrigin,
        actor: Actor | None,
        reason: RefusalReason,
        message: str,
    ) -> NoReturn:
        """Log a request refused before it could be admitted (e.g. an upload that is not an
        image, or could not be downloaded) and raise `Refused`."""
        await self._refuse(request, origin, actor, reason, message, f"({reason}): {message}")

    async def _refuse(
        self,
        request: GenerationRequest,
        origin: JobOrigin,
        actor: Actor | None,
        reason: RefusalReason,
        message: str,
        line: str | None = None,
        *,
        upload: bytes | None = None,
        flagged: bool = False,
    ) -> NoReturn:
        gen = await self.repos.generations.log_refusal(
            request, origin, reason=reason, message=message
        )
        if upload is not None:
            gen = await self.repos.generations.attach_upload(gen.id, upload, flagged=flagged)
        line = f"refused #{gen.id} " + (line or f"({reason}): {literal(request.prompt, 200)}")
        await self.modlog.write(origin.guild_id, line, actor)
        raise Refused(reason, message, gen)

    async def _queue_refusal(self, origin: JobOrigin) -> tuple[RefusalReason | None, str]:
        if origin.guild_id is not None:
            ban = await self.repos.bans.active(origin.guild_id, origin.user_id)
            if ban is not None:
                if ban.until is None:
                    return RefusalReason.BANNED_USER, (
                        "You are banned from making images in this server."
                    )
                return RefusalReason.BANNED_USER, (
                    "You are banned from making images in this server until "
                    f"{ban.until:%Y-%m-%d %H:%M} UTC."
                )
        if self.scheduler.paused:
            return RefusalReason.PAUSED, (
                "The queue is paused by the moderators; no new images for now, try again later."
            )
        cap = self.settings.queue.max_waiting_per_user
        if cap and self.scheduler.waiting_for(origin.user_id) >= cap:
            return RefusalReason.OVER_CAP, (
                f"You already have {cap} image{'s' if cap != 1 else ''} waiting, the most "
                "allowed; wait for one to finish or cancel one with /cancel."
            )
        quota = self.settings.queue.daily_quota
        if quota and await self.repos.generations.count_today(origin.user_id) >= quota:
            today = datetime.fromtimestamp(self.repos.db.now(), UTC)
            midnight = (today + timedelta(days=1)).strftime("%Y-%m-%d 00:00")
            return RefusalReason.OVER_QUOTA, (
                f"You have used all {quota} of today's requests; more from {midnight} UTC."
            )
        return None, ""
