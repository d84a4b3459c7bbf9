"""Admission: the one place that decides whether a request joins the queue, and that logs
every refusal (with its reason, for /mod log) and every acceptance.

A request is refused, in this order, for bad input (validation, mentions), a banned word, a
banned member, a paused queue, too many waiting jobs, the daily quota, or an unknown source.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from bot.db import Repositories, StoreError
from bot.domain import Actor, Generation, JobOrigin, RefusalReason, UserError
from bot.queue import Scheduler
from bot.settings import Settings
from bot.text import quote
from inference.request import GenerationRequest, RequestError, validate

from .modlog import ModLog
from .words import WordLists

MENTION = re.compile(r"@(everyone|here)\b|<@[!&]?\d+>|<#\d+>", re.IGNORECASE)
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
                f"Prompts cannot contain mentions like {found.group(0)}; remove it and try again."
            )


class Admission:
    def __init__(
        self,
        settings: Settings,
        repos: Repositories,
        scheduler: Scheduler,
        words: WordLists,
        modlog: ModLog,
    ):
        self.settings = settings
        self.repos = repos
        self.scheduler = scheduler
        self.words = words
        self.modlog = modlog
        # The checks against the queue and the write that joins it happen as one step.
        self._lock = asyncio.Lock()

    async def admit(
        self, request: GenerationRequest, origin: JobOrigin, actor: Actor | None = None
    ) -> Generation:
        """Queue the request or raise `Refused` (logged, with one sentence for the member)."""
        try:
            request = validate(request, self.settings.limits)
            refuse_mentions(request)
        except RequestError as error:
            line = f"refused (bad input): {error}"
            await self._refuse(request, origin, actor, RefusalReason.BAD_INPUT, str(error), line)
        # While this is decided, an idle worker may hold its batch open for it a moment.
        with self.scheduler.arriving(request):
            gen = await self._admit_valid(request, origin, actor)
        line = f"queued #{gen.id} ({origin.kind}): {quote(request.prompt)[:300]}"
        if origin.parent_id is not None:
            line += f" — from #{origin.parent_id}"
        await self.modlog.write(origin.guild_id, line, actor)
        return gen

    async def _admit_valid(
        self, request: GenerationRequest, origin: JobOrigin, actor: Actor | None
    ) -> Generation:
        banned = await self.words.banned_in(origin.guild_id, request)
        if banned is not None:
            gen = await self.repos.generations.log_refusal(
                request, origin, reason=RefusalReason.BANNED_WORD, message=BANNED_WORD
            )
            await self.modlog.write(
                origin.guild_id,
                f"refused #{gen.id} (banned word {banned!r}): {quote(request.prompt)[:200]}",
                actor,
            )
            raise Refused(RefusalReason.BANNED_WORD, BANNED_WORD, gen)
        async with self._lock:
            reason, message = await self._queue_refusal(origin)
            if reason is not None:
                await self._refuse(request, origin, actor, reason, message)
            try:
                gen = await self.scheduler.submit(request, origin)
            except StoreError as error:
                if origin.parent_id is None:
                    raise
                # The source generation is unknown: a refusal the member can act on.
                message = f"{error} Check the number and try again."
                await self._refuse(request, origin, actor, RefusalReason.BAD_INPUT, message)
        return gen

    async def _refuse(
        self,
        request: GenerationRequest,
        origin: JobOrigin,
        actor: Actor | None,
        reason: RefusalReason,
        message: str,
        line: str | None = None,
    ) -> NoReturn:
        gen = await self.repos.generations.log_refusal(
            request, origin, reason=reason, message=message
        )
        line = line or f"refused ({reason}): {quote(request.prompt)[:200]}"
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
