"""/mod: the moderators' tools — the prompt log, the review queue, bans, banned words, export,
pause, the audit log and the per-server safety setting.

Every use is checked on the server side (`require_moderator`), not only hidden by
`default_member_permissions`, which a server admin can change; a refused attempt is written to
the audit log. The actions themselves are `bot.services.moderation.Moderation`'s.
"""

from __future__ import annotations

import io
import logging
import zipfile
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.domain import AuditAction, SafetyMode, Status, UserError
from bot.durations import parse_duration, parse_since
from bot.text import clip, literal, plain
from bot.ui.client import EaselBot
from bot.ui.errors import NO_PINGS, reply
from bot.ui.members import actor_of
from bot.ui.pager import Pager, PageRenderer, page_count
from bot.ui.permissions import require_moderator

from .pages import PAGE_SIZE, audit_embed, log_embed, when, words_message
from .review import ReviewButton, ban_sentence, review_page, send_kwargs

log = logging.getLogger(__name__)

MAX_WORD_CHARS = 100


def _guild_id(interaction: discord.Interaction) -> int:
    """/mod runs only in servers (the group is guild_only)."""
    if interaction.guild_id is None:
        raise UserError("Moderator tools work in a server, not in direct messages.")
    return interaction.guild_id


class Moderation(commands.Cog):
    """The /mod group."""

    mod = app_commands.Group(
        name="mod",
        description="Moderator tools: prompt log, review, bans, banned words, export",
        guild_only=True,
        default_permissions=discord.Permissions(manage_messages=True),
    )
    words = app_commands.Group(name="words", description="This server's banned words", parent=mod)

    def __init__(self, bot: EaselBot):
        self.bot = bot
        self.moderation = bot.services.moderation
        # Hide /mod from members without the configured permission (a hint only: the real
        # check runs on every use, because a server admin can change this).
        permission = bot.settings.moderation.permission
        self.mod.default_permissions = discord.Permissions(**{permission: True})
        bot.add_dynamic_items(ReviewButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ReviewButton)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        command = interaction.command
        what = f"/{command.qualified_name}" if command is not None else "/mod"
        await require_moderator(interaction, self.moderation, what)
        return True

    async def _still_moderator(self, interaction: discord.Interaction) -> bool:
        await require_moderator(interaction, self.moderation, "a /mod page button")
        return True

    async def _send_page(
        self, interaction: discord.Interaction, render_page: PageRenderer, page: int
    ) -> None:
        embed, has_next = await render_page(page)
        kwargs: dict[str, Any] = {}
        if has_next or page > 1:
            kwargs["view"] = Pager(render_page, page, has_next, self._still_moderator)
        await reply(interaction, embed=embed, **kwargs)

    # --- /mod log ----------------------------------------------------------------------------

    @mod.command(name="log", description="The prompt log: every request, refused ones included")
    @app_commands.describe(
        user="Only this member's requests",
        contains="Only prompts (or negative prompts) containing this text",
        status="Only requests with this outcome",
        flagged="Only requests with (True) or without (False) images the safety checker flagged",
        since="How far back (2h, 7d) or from a UTC date (2025-03-01)",
        page="Which page (10 a page, newest first)",
    )
    # Members read the labels ("⛔ refused"); the values are what the log stores ("blocked").
    @app_commands.choices(status=[app_commands.Choice(name=s.label, value=s.value) for s in Status])
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
        if status is not None and status not in set(Status):
            raise UserError(f"The status is one of: {', '.join(s.label for s in Status)}.")
        guild_id = interaction.guild_id
        since_at = parse_since(since, now=self.moderation.now())
        history = self.bot.repos.history
        filters: dict[str, Any] = {
            "user_id": user.id if user else None,
            "contains": contains,
            "status": status,
            "flagged": flagged,
            "since": since_at,
        }
        shown = []
        if user:
            shown.append(f"member {plain(str(user))}")
        if contains:
            shown.append(f"containing “{clip(plain(contains), 40)}”")
        if status:
            shown.append(f"status {Status(status).label}")
        if flagged is not None:
            shown.append("flagged" if flagged else "not flagged")
        if since_at:
            shown.append(f"since {since_at:%Y-%m-%d %H:%M} UTC")

        async def render_page(number: int) -> tuple[discord.Embed, bool]:
            total = await history.count_log(guild_id=guild_id, **filters)
            pages = page_count(total, PAGE_SIZE)
            gens = await history.moderation_log(
                guild_id=guild_id, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE, **filters
            )
            embed = log_embed(gens, page=number, pages=pages, total=total, filters=", ".join(shown))
            return embed, number < pages

        await self._send_page(interaction, render_page, page)

    # --- /mod review -------------------------------------------------------------------------

    @mod.command(
        name="review", description="Flagged images and refused prompts waiting for a decision"
    )
    async def review(self, interaction: discord.Interaction) -> None:
        card = await review_page(self.bot, interaction.guild_id, 0)
        await interaction.response.send_message(
            ephemeral=True, allowed_mentions=NO_PINGS, **send_kwargs(card)
        )

    # --- /mod ban, /mod unban, /mod bans ------------------------------------------------------

    @mod.command(name="ban", description="Stop a member making images here; cancels their queue")
    @app_commands.describe(
        user="The member to ban",
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
        outcome = await self.moderation.ban(
            actor_of(interaction), _guild_id(interaction), user.id, span, reason
        )
        await reply(interaction, ban_sentence(outcome))

    @mod.command(name="unban", description="Let a banned member make images again")
    @app_commands.describe(user="The member to unban")
    async def unban(self, interaction: discord.Interaction, user: discord.User) -> None:
        await self.moderation.unban(actor_of(interaction), _guild_id(interaction), user.id)
        await reply(interaction, f"🕊️ Unbanned <@{user.id}>; they can make images again.")

    @mod.command(name="bans", description="Who is banned here, until when and why")
    async def bans(self, interaction: discord.Interaction) -> None:
        bans = await self.bot.repos.bans.of_guild(_guild_id(interaction))
        if not bans:
            await reply(interaction, "Nobody is banned here.")
            return
        lines = []
        for ban in bans[:25]:
            end = "no end" if ban.until is None else f"until {when(ban.until)}"
            line = f"• <@{ban.user_id}> — {end}, by <@{ban.banned_by}>"
            if ban.reason:
                line += f": “{literal(ban.reason, 100)}”"
            lines.append(line)
        if len(bans) > 25:
            lines.append(f"… and {len(bans) - 25} more.")
        await reply(interaction, clip("\n".join(lines), 2000))

    # --- /mod words --------------------------------------------------------------------------

    @words.command(name="add", description="Refuse prompts with this word or phrase")
    @app_commands.describe(word="A word or short phrase (matched on whole words)")
    async def words_add(
        self, interaction: discord.Interaction, word: app_commands.Range[str, 1, MAX_WORD_CHARS]
    ) -> None:
        folded = await self.moderation.add_word(actor_of(interaction), _guild_id(interaction), word)
        await reply(
            interaction,
            f"➕ Prompts with “{literal(folded)}” are now refused (also when "
            "written with accents, full-width letters or hidden "
            "characters).",
        )

    @words.command(name="remove", description="Allow a banned word again")
    @app_commands.describe(word="The word or phrase, as listed by /mod words list")
    async def words_remove(
        self, interaction: discord.Interaction, word: app_commands.Range[str, 1, MAX_WORD_CHARS]
    ) -> None:
        folded = await self.moderation.remove_word(
            actor_of(interaction), _guild_id(interaction), word
        )
        await reply(interaction, f"➖ “{literal(folded)}” is allowed again.")

    @words.command(name="list", description="This server's banned words")
    async def words_list(self, interaction: discord.Interaction) -> None:
        words = await self.bot.services.words.of(_guild_id(interaction))
        await reply(interaction, **words_message(words))

    # --- /mod export -------------------------------------------------------------------------

    @mod.command(name="export", description="The prompt log as a CSV file (one row per image)")
    @app_commands.describe(since="How far back (2h, 7d) or from a UTC date (2025-03-01)")
    async def export(self, interaction: discord.Interaction, since: str | None = None) -> None:
        since_at = parse_since(since, now=self.moderation.now())
        await interaction.response.defer(ephemeral=True, thinking=True)
        data, count = await self.moderation.export_csv(interaction.guild_id, since_at)
        stamp = self.moderation.now().strftime("%Y%m%d-%H%M")
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
        await self.moderation.record_export(
            actor_of(interaction), interaction.guild_id, count, since_at
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
        await self.moderation.pause(actor_of(interaction), interaction.guild_id, reason)
        await reply(
            interaction,
            f"⏸️ Paused. A running job finishes; {self.bot.scheduler.waiting_count} "
            "waiting job(s) wait; new requests are refused with a note "
            "that the moderators paused the queue. /mod resume starts it "
            "again.",
        )

    @mod.command(name="resume", description="Start making images again")
    async def resume(self, interaction: discord.Interaction) -> None:
        await self.moderation.resume(actor_of(interaction), interaction.guild_id)
        waiting = self.bot.scheduler.waiting_count
        await reply(interaction, f"▶️ Resumed; {waiting} waiting job(s) will run.")

    # --- /mod audit --------------------------------------------------------------------------

    @mod.command(name="audit", description="Every moderator action: who, what, on whom, why")
    @app_commands.describe(
        moderator="Only this moderator's actions",
        action="Only this action",
        page="Which page (10 a page, newest first)",
    )
    @app_commands.choices(
        action=[
            app_commands.Choice(name=action.label, value=action.value) for action in AuditAction
        ]
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
            for x in (
                f"by {plain(str(moderator))}" if moderator else "",
                f"action {AuditAction(action).label}" if action in set(AuditAction) else "",
            )
            if x
        )
        audit = self.bot.repos.audit

        async def render_page(number: int) -> tuple[discord.Embed, bool]:
            entries = await audit.entries(
                guild_id,
                action=action,
                actor_id=actor,
                limit=PAGE_SIZE + 1,
                offset=(number - 1) * PAGE_SIZE,
            )
            has_next = len(entries) > PAGE_SIZE
            embed = audit_embed(entries[:PAGE_SIZE], page=number, has_next=has_next, filters=shown)
            return embed, has_next

        await self._send_page(interaction, render_page, page)

    # --- settings ----------------------------------------------------------------------------

    @mod.command(name="safety", description="What happens to images the safety checker flags")
    @app_commands.describe(
        mode="withhold: only moderators see them; spoiler: posted behind a "
        "spoiler with a content warning"
    )
    @app_commands.choices(mode=[app_commands.Choice(name=m, value=m) for m in SafetyMode])
    async def safety(self, interaction: discord.Interaction, mode: str) -> None:
        if mode not in set(SafetyMode):
            raise UserError("The safety mode is withhold or spoiler.")
        chosen = SafetyMode(mode)
        before = await self.moderation.set_safety_mode(
            actor_of(interaction), _guild_id(interaction), chosen
        )
        if before is None:
            await reply(interaction, f"The safety mode is already {mode}: {chosen.label}.")
            return
        await reply(
            interaction, f"🛡️ Safety mode: {mode} — {chosen.label}. It applies to new results."
        )

    @mod.command(
        name="logchannel", description="Where one line per request and moderator action goes"
    )
    @app_commands.describe(channel="The moderators' channel (leave out to turn the log off)")
    async def logchannel(
        self, interaction: discord.Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        channel_id = channel.id if channel else None
        await self.moderation.set_log_channel(
            actor_of(interaction), _guild_id(interaction), channel_id
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
