"""/mod: the moderators' tools — the prompt log, the review queue, bans, banned words, export,
pause, the audit log and the per-server safety setting.

Every use is checked on the server side (`interaction_is_moderator`), not only hidden by
`default_member_permissions`, which a server admin can change; a refused attempt is written to
the audit log. Every moderator action goes to the audit table and one line to the moderators'
log channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import zipfile
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.durations import describe_duration, parse_duration, parse_since
from bot.errors import NO_PINGS, UserError, reply
from bot.permissions import interaction_is_moderator
from bot.store import EXPORT_COLUMNS, SAFETY_MODES, STATUSES, Generation, StoreError
from bot.wordfilter import normalise

from .moderation_views import (
    AUDIT_ACTIONS,
    PAGE_SIZE,
    BanModal,
    Pager,
    PageRenderer,
    ReviewButton,
    audit_embed,
    csv_bytes,
    empty_review,
    log_embed,
    review_card,
    when,
    words_message,
)

if TYPE_CHECKING:
    from bot.client import EaselBot

log = logging.getLogger(__name__)

PERMISSION_NAMES = {
    "manage_messages": "Manage Messages",
    "manage_guild": "Manage Server",
    "moderate_members": "Timeout Members",
    "kick_members": "Kick Members",
    "ban_members": "Ban Members",
    "administrator": "Administrator",
}
MAX_WORD_CHARS = 100
SAFETY_HELP = {
    "withhold": "flagged images are withheld (a notice in the channel; the image only in "
    "/mod review)",
    "spoiler": "flagged images are posted behind a spoiler with a content warning (and still "
    "listed in /mod review)",
}


class NotModerator(app_commands.CheckFailure):
    """A member without moderator rights used /mod or a review button."""


def _item_name(gen_id: int, index: int | None) -> str:
    return f"#{gen_id}'s prompt" if index is None else f"#{gen_id} image {index + 1}"


def _send_kwargs(card: dict[str, Any]) -> dict[str, Any]:
    """A review card (edit keywords) as keywords for a first send."""
    kwargs: dict[str, Any] = {"content": card["content"], "files": card["attachments"]}
    if card["embed"] is not None:
        kwargs["embed"] = card["embed"]
    if card["view"] is not None:
        kwargs["view"] = card["view"]
    return kwargs


class Moderation(commands.Cog):
    """The /mod group. Its name is used by the review buttons to find it."""

    mod = app_commands.Group(
        name="mod",
        description="Moderator tools: prompt log, review, bans, banned words, export",
        guild_only=True,
        default_permissions=discord.Permissions(manage_messages=True),
    )
    words = app_commands.Group(name="words", description="This server's banned words", parent=mod)

    def __init__(self, bot: EaselBot):
        self.bot = bot
        # Hide /mod from members without the configured permission (a hint only: the real
        # check runs on every use, because a server admin can change this).
        permission = bot.settings.moderation.permission
        self.mod.default_permissions = discord.Permissions(**{permission: True})
        bot.add_dynamic_items(ReviewButton)
        self._decisions = asyncio.Lock()

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ReviewButton)

    @property
    def store(self):
        return self.bot.store

    def now(self) -> datetime:
        """Now, by the store's clock (so times agree with what the store writes)."""
        return datetime.fromtimestamp(self.store.clock(), UTC)

    # --- who may -----------------------------------------------------------------------------

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        command = interaction.command
        await self.require_moderator(
            interaction, f"/{command.qualified_name}" if command is not None else "/mod"
        )
        return True

    async def require_moderator(self, interaction: discord.Interaction, what: str) -> None:
        """Pass for a moderator; otherwise log the attempt and raise `NotModerator`."""
        moderation = self.bot.settings.moderation
        if interaction.guild_id is not None and interaction_is_moderator(interaction, moderation):
            return
        if interaction.guild_id is not None:
            await self.store.add_audit(
                interaction.guild_id, interaction.user.id, "denied", details={"command": what}
            )
        await self.bot.audit_line(interaction, f"was refused {what} (not a moderator)")
        needs = (
            f"the {PERMISSION_NAMES.get(moderation.permission, moderation.permission)} permission"
        )
        if moderation.role_id:
            needs += f" or the <@&{moderation.role_id}> role"
        raise NotModerator(f"Only moderators can use this: it needs {needs}.")

    async def _still_moderator(self, interaction: discord.Interaction) -> bool:
        await self.require_moderator(interaction, "a /mod page button")
        return True

    async def _record(
        self, interaction: discord.Interaction, action: str, line: str, **fields: Any
    ) -> None:
        """One moderator action: a row in the audit table and a line in the log channel."""
        await self.store.add_audit(interaction.guild_id, interaction.user.id, action, **fields)
        await self.bot.audit_line(interaction, line)

    # --- servers -----------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_guild_available(self, guild: discord.Guild) -> None:
        await self.bot.jobs.prepare_guild(guild.id)

    @commands.Cog.listener()
    async def on_guild_join(self, guild: discord.Guild) -> None:
        await self.bot.jobs.prepare_guild(guild.id)

    # --- /mod log ----------------------------------------------------------------------------

    @mod.command(name="log", description="The prompt log: every request, refused ones included")
    @app_commands.describe(
        user="Only this member's requests",
        contains="Only prompts (or negative prompts) containing this text",
        status="Only requests with this outcome (blocked = refused)",
        flagged="Only requests with (True) or without (False) images the safety checker flagged",
        since="How far back (2h, 7d) or from a UTC date (2025-03-01)",
        page="Which page (10 a page, newest first)",
    )
    @app_commands.choices(status=[app_commands.Choice(name=s, value=s) for s in STATUSES])
    async def show_log(
        self,
        interaction: discord.Interaction,
        user: discord.User | None = None,
        contains: app_commands.Range[str, 1, 200] | None = None,
        status: str | None = None,
        flagged: bool | None = None,
        since: str | None = None,
        page: app_commands.Range[int, 1] = 1,
    ) -> None:
        if status is not None and status not in STATUSES:
            raise UserError(f"The status is one of: {', '.join(STATUSES)}.")
        guild_id = interaction.guild_id
        since_at = parse_since(since, now=self.now())
        filters = {
            "user_id": user.id if user else None,
            "contains": contains,
            "status": status,
            "flagged": flagged,
            "since": since_at,
        }
        shown = []
        if user:
            shown.append(f"member {user}")
        if contains:
            shown.append(f"containing “{render.clip(contains, 40)}”")
        if status:
            shown.append(f"status {status}")
        if flagged is not None:
            shown.append("flagged" if flagged else "not flagged")
        if since_at:
            shown.append(f"since {since_at:%Y-%m-%d %H:%M} UTC")

        async def render_page(number: int) -> tuple[discord.Embed, bool]:
            total = await self.store.count_log(guild_id=guild_id, **filters)
            pages = max(1, math.ceil(total / PAGE_SIZE))
            gens = await self.store.moderation_log(
                guild_id=guild_id, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE, **filters
            )
            embed = log_embed(gens, page=number, pages=pages, total=total, filters=", ".join(shown))
            return embed, number < pages

        await self._send_page(interaction, render_page, page)

    async def _send_page(
        self, interaction: discord.Interaction, render_page: PageRenderer, page: int
    ) -> None:
        embed, has_next = await render_page(page)
        kwargs: dict[str, Any] = {}
        if has_next or page > 1:
            kwargs["view"] = Pager(render_page, page, has_next, self._still_moderator)
        await reply(interaction, embed=embed, **kwargs)

    # --- /mod review -------------------------------------------------------------------------

    @mod.command(
        name="review", description="Flagged images and refused prompts waiting for a decision"
    )
    async def review(self, interaction: discord.Interaction) -> None:
        card = await self.review_page(interaction.guild_id, 0)
        await interaction.response.send_message(
            ephemeral=True, allowed_mentions=NO_PINGS, **_send_kwargs(card)
        )

    async def review_page(self, guild_id: int, position: int, note: str = "") -> dict[str, Any]:
        """The card of the item at `position` in the queue (the first one past the end)."""
        total = await self.store.count_pending_review(guild_id=guild_id)
        if total == 0:
            return empty_review(note)
        position = position if 0 <= position < total else 0
        items = await self.store.review_queue(guild_id=guild_id, limit=1, offset=position)
        if not items:
            position = 0
            items = await self.store.review_queue(guild_id=guild_id, limit=1)
            if not items:
                return empty_review(note)
        item = items[0]
        gen = item.generation
        matched = png = None
        if item.is_prompt:
            matched = await self.bot.jobs.banned_word(gen.guild_id, gen.request)
        else:
            with contextlib.suppress(StoreError):
                png = await self.store.read_image(gen.id, item.image_index)
        return review_card(
            item, position=position, total=total, matched=matched, png=png, note=note
        )

    async def review_action(
        self,
        interaction: discord.Interaction,
        action: str,
        gen_id: int,
        index: int | None,
        position: int,
    ) -> None:
        """A press of Release, Remove, Ban author or Skip on a review card."""
        await self.require_moderator(interaction, f"review {action} of #{gen_id}")
        guild_id = interaction.guild_id
        if action == "skip":
            card = await self.review_page(guild_id, position + 1)
            await interaction.response.edit_message(allowed_mentions=NO_PINGS, **card)
            return
        gen = await self.store.get(gen_id)
        problem = self._not_pending(gen, gen_id, index, guild_id)
        if problem:
            card = await self.review_page(guild_id, position, problem)
            await interaction.response.edit_message(allowed_mentions=NO_PINGS, **card)
            return
        if action == "ban":
            await interaction.response.send_modal(BanModal(self, gen, index, position))
            return
        await interaction.response.defer()
        async with self._decisions:  # two moderators pressing at once decide once
            gen = await self.store.get(gen_id)
            note = self._not_pending(gen, gen_id, index, guild_id)
            if note is None and action == "release":
                note = await self._release(interaction, gen, index)
            elif note is None:
                note = await self._remove(interaction, gen, index)
        card = await self.review_page(guild_id, position, note)
        await interaction.edit_original_response(allowed_mentions=NO_PINGS, **card)

    @staticmethod
    def _not_pending(
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
        if state == "pending" and not gen.deleted:
            return None
        what = _item_name(gen_id, index)
        if state in ("released", "removed"):
            return f"ℹ️ {what} was already {state}" + (f" by <@{by}>." if by else ".")
        return f"ℹ️ {what} is not waiting for review."

    async def _release(
        self, interaction: discord.Interaction, gen: Generation, index: int | None
    ) -> str:
        what = _item_name(gen.id, index)
        await self.store.record_review(gen.id, index, "released", moderator_id=interaction.user.id)
        await self._record(
            interaction,
            "release",
            f"released {what} by <@{gen.user_id}>",
            target_user_id=gen.user_id,
            target_generation_id=gen.id,
            details={"prompt": True} if index is None else {"image": index + 1},
        )
        if index is None:
            return f"✅ Released {what}: marked reviewed (nothing is generated)."
        mode = (await self.store.guild_settings(gen.guild_id)).safety_mode
        if mode == "spoiler" and gen.message_id and not gen.deleted:
            return f"✅ Released {what}; it stays behind its spoiler in the channel."
        message = await self._repost(gen.id)
        if message is None:
            return f"✅ Released {what}, but it could not be posted in the channel."
        return f"✅ Released {what}: posted in <#{message.channel.id}> ({message.jump_url})."

    async def _remove(
        self,
        interaction: discord.Interaction,
        gen: Generation,
        index: int | None,
        *,
        reason: str | None = None,
    ) -> str:
        what = _item_name(gen.id, index)
        await self.store.record_review(gen.id, index, "removed", moderator_id=interaction.user.id)
        await self._record(
            interaction,
            "remove",
            f"removed {what} by <@{gen.user_id}>",
            target_user_id=gen.user_id,
            target_generation_id=gen.id,
            reason=reason,
            details={"prompt": True} if index is None else {"image": index + 1},
        )
        if index is None:
            return f"🗑️ Removed {what}: the refusal stands."
        mode = (await self.store.guild_settings(gen.guild_id)).safety_mode
        if mode == "spoiler" and gen.message_id and not gen.deleted:
            await self._repost(gen.id)  # the spoilered image comes off the channel
            return f"🗑️ Removed {what}: taken off the channel."
        return f"🗑️ Removed {what}: it stays hidden."

    async def _repost(self, gen_id: int) -> discord.Message | None:
        """Post a result again as it should look now (after a review decision), then delete
        the message it replaces. None if it could not be posted."""
        gen = await self.store.get(gen_id)
        if gen is None or gen.deleted or gen.status != "done":
            return None
        result = await self.store.load_result(gen)
        try:
            message = await self.bot.jobs.post_result(gen, result)
        except discord.HTTPException as error:
            log.warning("Could not post #%d again after a review: %s", gen_id, error)
            return None
        if message is None:
            return None
        await self.store.mark_delivered(
            gen.id, channel_id=message.channel.id, message_id=message.id
        )
        if gen.message_id and gen.message_channel_id and gen.message_id != message.id:
            old = self.bot.get_partial_messageable(gen.message_channel_id, guild_id=gen.guild_id)
            try:
                await old.get_partial_message(gen.message_id).delete()
            except discord.NotFound:
                pass
            except discord.HTTPException as error:
                log.warning("Could not delete the old message of #%d: %s", gen_id, error)
        return message

    async def ban_from_review(
        self,
        interaction: discord.Interaction,
        gen_id: int,
        index: int | None,
        position: int,
        duration: str,
        reason: str,
    ) -> None:
        """The Ban author modal was sent: ban the author, remove the item, show the next."""
        await self.require_moderator(interaction, f"review ban of #{gen_id}")
        span = parse_duration(duration)
        gen = await self.store.get(gen_id)
        if gen is None or gen.guild_id != interaction.guild_id:
            raise UserError(f"There is no #{gen_id} in this server.")
        await interaction.response.defer()
        note = await self._ban(
            interaction, gen.user_id, span, reason.strip() or None, gen_id=gen.id
        )
        async with self._decisions:
            gen = await self.store.get(gen_id)
            if self._not_pending(gen, gen_id, index, interaction.guild_id) is None:
                note += "\n" + await self._remove(interaction, gen, index, reason="author banned")
        card = await self.review_page(interaction.guild_id, position, note)
        await interaction.edit_original_response(allowed_mentions=NO_PINGS, **card)

    # --- /mod ban, /mod unban, /mod bans ------------------------------------------------------

    @mod.command(name="ban", description="Stop a member making images here; cancels their queue")
    @app_commands.describe(
        user="Who",
        duration="How long: 30m, 2h, 7d, 1w (leave out: no end)",
        reason="Why (kept in the audit log)",
    )
    async def ban(
        self,
        interaction: discord.Interaction,
        user: discord.User,
        duration: app_commands.Range[str, 1, 40] | None = None,
        reason: app_commands.Range[str, 1, 300] | None = None,
    ) -> None:
        span = parse_duration(duration)
        if user.bot:
            raise UserError("Bots do not make images; there is nothing to ban.")
        await reply(interaction, await self._ban(interaction, user.id, span, reason))

    async def _ban(
        self,
        interaction: discord.Interaction,
        user_id: int,
        span: timedelta | None,
        reason: str | None,
        *,
        gen_id: int | None = None,
    ) -> str:
        if user_id == interaction.user.id:
            raise UserError("You cannot ban yourself.")
        ban = await self.store.ban(
            interaction.guild_id,
            user_id,
            by=interaction.user.id,
            reason=reason or "",
            duration=span,
        )
        cancelled = await self.bot.scheduler.cancel_user(user_id, guild_id=interaction.guild_id)
        until = "permanent" if ban.until is None else ban.until.isoformat(timespec="minutes")
        length = "with no end" if span is None else f"for {describe_duration(span)}"
        await self._record(
            interaction,
            "ban",
            f"banned <@{user_id}> {length}" + (f": {render.clip(reason, 200)}" if reason else ""),
            target_user_id=user_id,
            target_generation_id=gen_id,
            reason=reason,
            details={"until": until, "cancelled": cancelled},
        )
        text = f"🔨 Banned <@{user_id}> {length}"
        if ban.until is not None:
            text += f" (until {when(ban.until)})"
        text += ". Their new requests are refused"
        if cancelled:
            text += "; cancelled their waiting jobs " + ", ".join(f"#{i}" for i in cancelled)
        return text + "."

    @mod.command(name="unban", description="Let a banned member make images again")
    @app_commands.describe(user="Who")
    async def unban(self, interaction: discord.Interaction, user: discord.User) -> None:
        if not await self.store.unban(interaction.guild_id, user.id, by=interaction.user.id):
            raise UserError(f"<@{user.id}> is not banned here.")
        await self._record(interaction, "unban", f"unbanned <@{user.id}>", target_user_id=user.id)
        await reply(interaction, f"🕊️ Unbanned <@{user.id}>; they can make images again.")

    @mod.command(name="bans", description="Who is banned here, until when and why")
    async def bans(self, interaction: discord.Interaction) -> None:
        bans = await self.store.bans(interaction.guild_id)
        if not bans:
            await reply(interaction, "Nobody is banned here.")
            return
        lines = []
        for ban in bans[:25]:
            end = "no end" if ban.until is None else f"until {when(ban.until)}"
            line = f"• <@{ban.user_id}> — {end}, by <@{ban.banned_by}>"
            if ban.reason:
                line += f": “{render.clip(render.quote(ban.reason), 100)}”"
            lines.append(line)
        if len(bans) > 25:
            lines.append(f"… and {len(bans) - 25} more.")
        await reply(interaction, render.clip("\n".join(lines), 2000))

    # --- /mod words --------------------------------------------------------------------------

    @words.command(name="add", description="Refuse prompts with this word or phrase")
    @app_commands.describe(word="A word or short phrase (matched on whole words)")
    async def words_add(
        self, interaction: discord.Interaction, word: app_commands.Range[str, 1, MAX_WORD_CHARS]
    ) -> None:
        folded = self._folded_word(word)
        await self.bot.jobs.prepare_guild(interaction.guild_id)
        if not await self.store.add_banned_word(
            interaction.guild_id, folded, by=interaction.user.id
        ):
            raise UserError(f"“{folded}” is already on this server's list.")
        await self._record(
            interaction, "word_add", f"banned the word “{folded}”", details={"word": folded}
        )
        await reply(
            interaction,
            f"➕ Prompts with “{folded}” are now refused (also when "
            "written with accents, full-width letters or hidden "
            "characters).",
        )

    @words.command(name="remove", description="Allow a banned word again")
    @app_commands.describe(word="The word or phrase, as listed by /mod words list")
    async def words_remove(
        self, interaction: discord.Interaction, word: app_commands.Range[str, 1, MAX_WORD_CHARS]
    ) -> None:
        folded = self._folded_word(word)
        await self.bot.jobs.prepare_guild(interaction.guild_id)
        removed = await self.store.remove_banned_word(interaction.guild_id, folded)
        if not removed and folded != word.strip():
            removed = await self.store.remove_banned_word(interaction.guild_id, word)
        if not removed:
            raise UserError(f"“{folded}” is not on this server's list; see /mod words list.")
        await self._record(
            interaction,
            "word_remove",
            f"allowed the word “{folded}” again",
            details={"word": folded},
        )
        await reply(interaction, f"➖ “{folded}” is allowed again.")

    @words.command(name="list", description="This server's banned words")
    async def words_list(self, interaction: discord.Interaction) -> None:
        words = await self.bot.jobs.server_words(interaction.guild_id)
        await reply(interaction, **words_message(words))

    @staticmethod
    def _folded_word(word: str) -> str:
        folded = " ".join(normalise(word).split())
        if not any(ch.isalnum() for ch in folded):
            raise UserError("A banned word needs at least one letter or digit.")
        return folded

    # --- /mod export -------------------------------------------------------------------------

    @mod.command(name="export", description="The prompt log as a CSV file (one row per image)")
    @app_commands.describe(since="How far back (2h, 7d) or from a UTC date (2025-03-01)")
    async def export(self, interaction: discord.Interaction, since: str | None = None) -> None:
        since_at = parse_since(since, now=self.now())
        await interaction.response.defer(ephemeral=True, thinking=True)
        rows = self.store.iter_export(guild_id=interaction.guild_id, since=since_at)
        data, count = csv_bytes([row async for row in rows], EXPORT_COLUMNS)
        stamp = self.now().strftime("%Y%m%d-%H%M")
        name = f"easel-log-{stamp}.csv"
        guild = interaction.guild
        limit = guild.filesize_limit if guild is not None else 10 * 1024 * 1024
        if len(data) > limit * 0.95:
            packed = io.BytesIO()
            with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(name, data)
            data, name = packed.getvalue(), name.removesuffix(".csv") + ".zip"
            if len(data) > limit * 0.95:
                raise UserError(
                    "The log is too large for one file; export a shorter span with since (e.g. 7d)."
                )
        await self._record(
            interaction,
            "export",
            f"exported the prompt log ({count} rows)",
            details={"rows": count, "since": since_at.isoformat() if since_at else None},
        )
        span = f" since {since_at:%Y-%m-%d %H:%M} UTC" if since_at else ""
        await interaction.followup.send(
            f"📤 The prompt log{span}: {count} rows, one per image (refused and failed "
            "requests get one row each).",
            file=discord.File(io.BytesIO(data), filename=name),
            ephemeral=True,
            allowed_mentions=NO_PINGS,
        )

    # --- /mod pause, /mod resume -------------------------------------------------------------

    @mod.command(name="pause", description="Stop starting new images (waiting ones wait)")
    @app_commands.describe(reason="Why (kept in the audit log)")
    async def pause(
        self,
        interaction: discord.Interaction,
        reason: app_commands.Range[str, 1, 300] | None = None,
    ) -> None:
        scheduler = self.bot.scheduler
        if scheduler.paused:
            raise UserError("The queue is already paused; /mod resume starts it again.")
        await scheduler.pause()
        await self._record(
            interaction,
            "pause",
            "paused the queue" + (f": {render.clip(reason, 200)}" if reason else ""),
            reason=reason,
        )
        await reply(
            interaction,
            f"⏸️ Paused. A running job finishes; {scheduler.waiting_count} "
            "waiting job(s) wait; new requests are refused with a note "
            "that the moderators paused the queue. /mod resume starts it "
            "again.",
        )

    @mod.command(name="resume", description="Start making images again")
    async def resume(self, interaction: discord.Interaction) -> None:
        scheduler = self.bot.scheduler
        if not scheduler.paused:
            raise UserError("The queue is not paused.")
        await scheduler.resume()
        await self._record(interaction, "resume", "resumed the queue")
        await reply(interaction, f"▶️ Resumed; {scheduler.waiting_count} waiting job(s) will run.")

    # --- /mod audit --------------------------------------------------------------------------

    @mod.command(name="audit", description="Every moderator action: who, what, on whom, why")
    @app_commands.describe(
        moderator="Only this moderator's actions",
        action="Only this action",
        page="Which page (10 a page, newest first)",
    )
    @app_commands.choices(
        action=[app_commands.Choice(name=name, value=name) for name in AUDIT_ACTIONS]
    )
    async def audit(
        self,
        interaction: discord.Interaction,
        moderator: discord.User | None = None,
        action: str | None = None,
        page: app_commands.Range[int, 1] = 1,
    ) -> None:
        guild_id = interaction.guild_id
        actor = moderator.id if moderator else None
        shown = ", ".join(
            x
            for x in (f"by {moderator}" if moderator else "", f"action {action}" if action else "")
            if x
        )

        async def render_page(number: int) -> tuple[discord.Embed, bool]:
            entries = await self.store.audit_log(
                guild_id,
                action=action,
                actor_id=actor,
                limit=PAGE_SIZE + 1,
                offset=(number - 1) * PAGE_SIZE,
            )
            has_next = len(entries) > PAGE_SIZE
            return audit_embed(
                entries[:PAGE_SIZE], page=number, has_next=has_next, filters=shown
            ), has_next

        await self._send_page(interaction, render_page, page)

    # --- settings ----------------------------------------------------------------------------

    @mod.command(name="safety", description="What happens to images the safety checker flags")
    @app_commands.describe(
        mode="withhold: only moderators see them; spoiler: posted behind a "
        "spoiler with a content warning"
    )
    @app_commands.choices(mode=[app_commands.Choice(name=m, value=m) for m in SAFETY_MODES])
    async def safety(self, interaction: discord.Interaction, mode: str) -> None:
        if mode not in SAFETY_MODES:
            raise UserError("The safety mode is withhold or spoiler.")
        await self.bot.jobs.prepare_guild(interaction.guild_id)
        before = (await self.store.guild_settings(interaction.guild_id)).safety_mode
        if before == mode:
            await reply(interaction, f"The safety mode is already {mode}: {SAFETY_HELP[mode]}.")
            return
        await self.store.set_safety_mode(interaction.guild_id, mode)
        await self._record(
            interaction,
            "safety_mode",
            f"set the safety mode to {mode}",
            details={"mode": mode, "from": before},
        )
        await reply(
            interaction, f"🛡️ Safety mode: {mode} — {SAFETY_HELP[mode]}. It applies to new results."
        )

    @mod.command(
        name="logchannel", description="Where one line per request and moderator action goes"
    )
    @app_commands.describe(channel="The moderators' channel (leave out to turn the log off)")
    async def logchannel(
        self, interaction: discord.Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        channel_id = channel.id if channel else None
        await self.store.set_log_channel(interaction.guild_id, channel_id)
        await self._record(
            interaction,
            "log_channel",
            f"set the log channel to <#{channel_id}>"
            if channel_id
            else "turned the log channel off",
            details={"channel_id": channel_id},
        )
        if channel_id:
            await reply(
                interaction,
                f"📋 One line per request, refusal, flag and moderator "
                f"action now goes to <#{channel_id}>.",
            )
        else:
            fallback = self.bot.settings.discord.log_channel_id
            await reply(
                interaction,
                "📋 This server's log channel is off"
                + (f"; lines go to the configured <#{fallback}>." if fallback else "."),
            )


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Moderation(bot))
