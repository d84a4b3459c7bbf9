"""The moderators' actions: review decisions, bans, banned words, pause, the safety mode, the
log channel and the export. Every action is written to the audit table and to the moderators'
log channel; who counts as a moderator is checked by the Discord layer before any of this."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.db import Repositories
from bot.db.export import EXPORT_COLUMNS, csv_bytes
from bot.domain import (
    Actor,
    AuditAction,
    Ban,
    Generation,
    RefusalReason,
    ReviewState,
    SafetyMode,
    UserError,
)
from bot.durations import describe_duration
from bot.queue import Scheduler
from bot.settings import Settings
from bot.text import channel, literal, user
from bot.wordfilter import normalise

from .modlog import ModLog
from .visibility import repost_after
from .words import WordLists


def item_name(gen_id: int, index: int | None) -> str:
    """ "#7 image 2" or "#7's prompt" (a refused prompt is reviewed as a whole)."""
    return f"#{gen_id}'s prompt" if index is None else f"#{gen_id} image {index + 1}"


@dataclass(frozen=True)
class Decision:
    """A moderator's review decision, recorded: what changed and whether the result must be
    posted again (it enters or leaves the channel)."""

    gen: Generation
    index: int | None
    state: ReviewState
    repost: bool
    mode: SafetyMode

    @property
    def what(self) -> str:
        if self.index is None and self.gen.refusal_reason == RefusalReason.FLAGGED_UPLOAD:
            return f"#{self.gen.id}'s upload"
        return item_name(self.gen.id, self.index)

    @property
    def posted(self) -> bool:
        return bool(self.gen.message_id) and not self.gen.deleted


@dataclass(frozen=True)
class BanOutcome:
    ban: Ban
    cancelled: list[int]
    length: str  # "for 2 hours" or "with no end"


class Moderation:
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
        self._decisions = asyncio.Lock()  # two moderators pressing at once decide once

    def now(self) -> datetime:
        """Now, by the database's clock (so times agree with what it writes)."""
        return datetime.fromtimestamp(self.repos.db.now(), UTC)

    async def record(
        self,
        actor: Actor,
        guild_id: int | None,
        action: AuditAction,
        line: str,
        **fields: Any,
    ) -> None:
        """One moderator action: a row in the audit table and a line in the log channel."""
        await self.repos.audit.add(guild_id, actor.user_id, action, **fields)
        await self.modlog.write(guild_id, line, actor)

    async def denied(self, actor: Actor, guild_id: int | None, what: str) -> None:
        """A member without moderator rights tried `what`: audited, and logged."""
        if guild_id is not None:
            await self.repos.audit.add(
                guild_id, actor.user_id, AuditAction.DENIED, details={"command": what}
            )
        await self.modlog.write(guild_id, f"was refused {what} (not a moderator)", actor)

    # -- review ----------------------------------------------------------------------------

    @staticmethod
    def not_pending(
        gen: Generation | None, gen_id: int, index: int | None, guild_id: int | None
    ) -> str | None:
        """Why this item cannot be decided now, or None when it is waiting for review."""
        if gen is None or gen.guild_id != guild_id:
            return f"ℹ️ There is no #{gen_id} in this server."
        if index is None:
            state, by = gen.review, gen.reviewed_by
        else:
            image = gen.image(index)
            state, by = (image.review, image.reviewed_by) if image else (None, None)
        if state == ReviewState.PENDING and not gen.deleted:
            return None
        what = item_name(gen_id, index)
        if state in (ReviewState.RELEASED, ReviewState.REMOVED):
            return f"ℹ️ {what} was already {state}" + (f" by {user(by)}." if by else ".")
        return f"ℹ️ {what} is not waiting for review."

    async def decide(
        self,
        actor: Actor,
        guild_id: int | None,
        gen_id: int,
        index: int | None,
        state: ReviewState,
        *,
        reason: str | None = None,
    ) -> Decision | str:
        """Release or remove a flagged image (`index`) or a refused prompt (None). Returns the
        recorded decision, or the sentence saying why there was nothing to decide."""
        async with self._decisions:
            gen = await self.repos.generations.get(gen_id)
            problem = self.not_pending(gen, gen_id, index, guild_id)
            if problem is not None or gen is None:
                return problem or f"ℹ️ There is no #{gen_id} in this server."
            mode = await self.safety_mode(gen.guild_id)
            image = None if index is None else gen.image(index)
            await self.repos.review.record(gen.id, index, state, moderator_id=actor.user_id)
            verb = "released" if state == ReviewState.RELEASED else "removed"
            action = AuditAction.RELEASE if state == ReviewState.RELEASED else AuditAction.REMOVE
            await self.record(
                actor,
                guild_id,
                action,
                f"{verb} {item_name(gen.id, index)} by {user(gen.user_id)}",
                target_user_id=gen.user_id,
                target_generation_id=gen.id,
                reason=reason,
                details={"prompt": True} if index is None else {"image": index + 1},
            )
            posted = bool(gen.message_id) and not gen.deleted
            repost = image is not None and repost_after(image, state, mode, posted=posted)
            return Decision(gen, index, state, repost, mode)

    async def safety_mode(self, guild_id: int | None) -> SafetyMode:
        if guild_id is None:
            return SafetyMode.WITHHOLD
        return (await self.repos.guilds.settings(guild_id)).safety_mode

    # -- bans ------------------------------------------------------------------------------

    async def ban(
        self,
        actor: Actor,
        guild_id: int,
        user_id: int,
        span: timedelta | None,
        reason: str | None,
        *,
        gen_id: int | None = None,
    ) -> BanOutcome:
        """Ban a member (for `span`, or with no end) and cancel their waiting jobs here."""
        if user_id == actor.user_id:
            raise UserError("You cannot ban yourself.")
        ban = await self.repos.bans.ban(
            guild_id, user_id, by=actor.user_id, reason=reason or "", duration=span
        )
        cancelled = await self.scheduler.cancel_user(user_id, guild_id=guild_id)
        until = "permanent" if ban.until is None else ban.until.isoformat(timespec="minutes")
        length = "with no end" if span is None else f"for {describe_duration(span)}"
        await self.record(
            actor,
            guild_id,
            AuditAction.BAN,
            f"banned {user(user_id)} {length}" + (f": {literal(reason, 200)}" if reason else ""),
            target_user_id=user_id,
            target_generation_id=gen_id,
            reason=reason,
            details={"until": until, "cancelled": cancelled},
        )
        return BanOutcome(ban, cancelled, length)

    async def unban(self, actor: Actor, guild_id: int, user_id: int) -> None:
        if not await self.repos.bans.unban(guild_id, user_id, by=actor.user_id):
            raise UserError(f"{user(user_id)} is not banned here.")
        await self.record(
            actor, guild_id, AuditAction.UNBAN, f"unbanned {user(user_id)}", target_user_id=user_id
        )

    # -- banned words ----------------------------------------------------------------------

    @staticmethod
    def fold_word(word: str) -> str:
        """A banned word as it is stored and matched (folded like prompts are)."""
        folded = " ".join(normalise(word).split())
        if not any(ch.isalnum() for ch in folded):
            raise UserError("A banned word needs at least one letter or digit.")
        return folded

    async def add_word(self, actor: Actor, guild_id: int, word: str) -> str:
        folded = self.fold_word(word)
        await self.words.prepare_guild(guild_id)
        if not await self.repos.words.add(guild_id, folded, by=actor.user_id):
            raise UserError(f"“{literal(folded)}” is already on this server's list.")
        await self.record(
            actor,
            guild_id,
            AuditAction.WORD_ADD,
            f"banned the word “{literal(folded)}”",
            details={"word": folded},
        )
        return folded

    async def remove_word(self, actor: Actor, guild_id: int, word: str) -> str:
        folded = self.fold_word(word)
        await self.words.prepare_guild(guild_id)
        removed = await self.repos.words.remove(guild_id, folded)
        if not removed and folded != word.strip():
            removed = await self.repos.words.remove(guild_id, word)
        if not removed:
            raise UserError(
                f"“{literal(folded)}” is not on this server's list; see /mod words list."
            )
        await self.record(
            actor,
            guild_id,
            AuditAction.WORD_REMOVE,
            f"allowed the word “{literal(folded)}” again",
            details={"word": folded},
        )
        return folded

    # -- the queue -------------------------------------------------------------------------

    async def pause(self, actor: Actor, guild_id: int | None, reason: str | None) -> None:
        if self.scheduler.paused:
            raise UserError("The queue is already paused; /mod resume starts it again.")
        await self.scheduler.pause()
        await self.record(
            actor,
            guild_id,
            AuditAction.PAUSE,
            "paused the queue" + (f": {literal(reason, 200)}" if reason else ""),
            reason=reason,
        )

    async def resume(self, actor: Actor, guild_id: int | None) -> None:
        if not self.scheduler.paused:
            raise UserError("The queue is not paused.")
        await self.scheduler.resume()
        await self.record(actor, guild_id, AuditAction.RESUME, "resumed the queue")

    # -- server settings -------------------------------------------------------------------

    async def set_safety_mode(
        self, actor: Actor, guild_id: int, mode: SafetyMode
    ) -> SafetyMode | None:
        """Set the server's safety mode; returns the mode before, or None if it was already
        `mode` (nothing changed)."""
        await self.words.prepare_guild(guild_id)
        before = await self.safety_mode(guild_id)
        if before == mode:
            return None
        await self.repos.guilds.set_safety_mode(guild_id, mode)
        await self.record(
            actor,
            guild_id,
            AuditAction.SAFETY_MODE,
            f"set the safety mode to {mode}",
            details={"mode": mode.value, "from": before.value},
        )
        return before

    async def set_log_channel(self, actor: Actor, guild_id: int, channel_id: int | None) -> None:
        await self.repos.guilds.set_log_channel(guild_id, channel_id)
        await self.record(
            actor,
            guild_id,
            AuditAction.LOG_CHANNEL,
            f"set the log channel to {channel(channel_id)}"
            if channel_id
            else "turned the log channel off",
            details={"channel_id": channel_id},
        )

    # -- export ----------------------------------------------------------------------------

    async def export_csv(self, guild_id: int | None, since: datetime | None) -> tuple[bytes, int]:
        """The server's prompt log as CSV bytes (one row per image) and the row count."""
        rows = [row async for row in self.repos.export.rows(guild_id=guild_id, since=since)]
        return csv_bytes(rows, EXPORT_COLUMNS)

    async def record_export(
        self, actor: Actor, guild_id: int | None, count: int, since: datetime | None
    ) -> None:
        await self.record(
            actor,
            guild_id,
            AuditAction.EXPORT,
            f"exported the prompt log ({count} rows)",
            details={"rows": count, "since": since.isoformat() if since else None},
        )
