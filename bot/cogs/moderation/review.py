"""/mod review: one flagged image or refused prompt at a time, with Release, Remove, Ban author
and Skip. The buttons are persistent (their custom_id carries the item), and the moderator's
rights are checked at every press."""

from __future__ import annotations

import contextlib
import io
import re
from typing import Any, ClassVar, Self

import discord

from bot.db import StoreError
from bot.domain import Generation, RefusalReason, ReviewItem, ReviewState, UserError
from bot.durations import parse_duration
from bot.services.moderation import BanOutcome, Decision
from bot.text import channel, clip, literal, plain, user
from bot.ui.client import EaselBot, easel
from bot.ui.errors import NO_PINGS, report
from bot.ui.lab import why_flagged
from bot.ui.members import actor_of
from bot.ui.permissions import require_moderator

from .pages import MOD_COLOUR, when

Card = dict[str, Any]  # keyword arguments of the message that shows a review item


def review_card(
    item: ReviewItem,
    *,
    position: int,
    total: int,
    matched: str | None,
    png: bytes | None,
    note: str = "",
    why: str | None = None,
) -> Card:
    """The message that shows one review item (ephemeral), as `edit_message` keywords."""
    gen = item.generation
    request_line = literal(gen.prompt, 1500, inline=False)
    upload = item.image_index is None and gen.refusal_reason == RefusalReason.FLAGGED_UPLOAD
    if upload:
        title = f"#{gen.id} · uploaded image flagged by the safety checker"
        footer = (
            "Only you see this image. Release marks it reviewed (nothing is generated) · "
            "Remove confirms the refusal · Ban author bans the member and removes it."
        )
    elif item.image_index is None:
        reason = gen.refusal_reason.label if gen.refusal_reason else "refused"
        title = f"#{gen.id} · prompt refused: {reason}"
        footer = (
            "Release marks it reviewed (nothing is generated) · Remove confirms the "
            "refusal · Ban author bans the member and removes it."
        )
    else:
        title = (
            f"#{gen.id} · image {item.image_index + 1} of {len(gen.images)} · flagged by "
            "the safety checker"
        )
        footer = (
            "Only you see this image. Release posts it in the channel · Remove keeps it "
            "hidden · Ban author bans the member and removes it."
        )
    embed = discord.Embed(title=title, description=request_line, colour=MOD_COLOUR)
    if gen.negative:
        embed.add_field(
            name="Negative", value=literal(gen.negative, 900, inline=False), inline=False
        )
    author = user(gen.user_id) + (f" ({literal(gen.user_name)})" if gen.user_name else "")
    embed.add_field(name="Author", value=clip(author, 1024))
    if gen.channel_id:
        embed.add_field(name="Channel", value=channel(gen.channel_id))
    embed.add_field(name="Asked", value=when(gen.created_at, "R"))
    if matched:
        embed.add_field(name="Matched word", value=f"“{literal(matched, 200)}”")
    if item.image_index is not None:
        image = gen.image(item.image_index)
        if image is not None:
            embed.add_field(name="Seed", value=str(image.seed))
    if (item.image_index is not None or upload) and png is None:
        embed.add_field(name="Image", value="The image file is missing on disk.", inline=False)
    if item.image_index is not None and why:
        embed.add_field(name="Why it was flagged", value=clip(why, 1024), inline=False)
    embed.set_footer(text=footer)
    content = (note + "\n" if note else "") + f"**Review queue** — item {position + 1} of {total}"
    files = []
    if png is not None:
        # A spoiler even here: the moderator chooses when to look (a classroom projector…).
        which = "upload" if item.image_index is None else str(item.image_index + 1)
        files.append(
            discord.File(io.BytesIO(png), filename=f"review_{gen.id}_{which}.png", spoiler=True)
        )
    view = discord.ui.View(timeout=None)
    for action in ReviewButton.LOOKS:
        view.add_item(ReviewButton(action, gen.id, item.image_index, position))
    return {"content": content, "embed": embed, "attachments": files, "view": view}


def empty_review(note: str = "") -> Card:
    content = (note + "\n" if note else "") + "✅ Nothing is waiting for review."
    return {"content": content, "embed": None, "attachments": [], "view": None}


def send_kwargs(card: Card) -> dict[str, Any]:
    """A review card (edit keywords) as keywords for a first send."""
    kwargs: dict[str, Any] = {"content": card["content"], "files": card["attachments"]}
    if card["embed"] is not None:
        kwargs["embed"] = card["embed"]
    if card["view"] is not None:
        kwargs["view"] = card["view"]
    return kwargs


async def review_page(bot: EaselBot, guild_id: int | None, position: int, note: str = "") -> Card:
    """The card of the item at `position` in the queue (the first one past the end)."""
    review = bot.repos.review
    total = await review.count_pending(guild_id=guild_id)
    if total == 0:
        return empty_review(note)
    position = position if 0 <= position < total else 0
    items = await review.queue(guild_id=guild_id, limit=1, offset=position)
    if not items:
        position = 0
        items = await review.queue(guild_id=guild_id, limit=1)
        if not items:
            return empty_review(note)
    item = items[0]
    gen = item.generation
    matched = png = why = None
    if item.image_index is None:
        matched = await bot.services.words.banned_in(gen.guild_id, gen.request)
        if gen.refusal_reason == RefusalReason.FLAGGED_UPLOAD:
            with contextlib.suppress(StoreError):
                png = await bot.repos.images.read_upload(gen)
    else:
        with contextlib.suppress(StoreError):
            png = await bot.repos.images.read(gen.id, item.image_index)
        record = await bot.repos.lab.get(gen.id)
        scores = record.safety_scores.get(item.image_index, ()) if record else ()
        why = why_flagged(scores)
    return review_card(
        item, position=position, total=total, matched=matched, png=png, note=note, why=why
    )


async def _after_decision(bot: EaselBot, decision: Decision | str) -> str:
    """The note shown above the next card: what the decision did to the channel."""
    if isinstance(decision, str):
        return decision
    what = decision.what
    if decision.state == ReviewState.RELEASED:
        if decision.index is None:
            return f"✅ Released {what}: marked reviewed (nothing is generated)."
        if not decision.repost:
            return f"✅ Released {what}; it stays behind its spoiler in the channel."
        message = await bot.delivery.repost(decision.gen.id)
        if message is None:
            return f"✅ Released {what}, but it could not be posted in the channel."
        return f"✅ Released {what}: posted in {channel(message.channel.id)} ({message.jump_url})."
    if decision.index is None:
        return f"🗑️ Removed {what}: the refusal stands."
    if decision.repost:
        await bot.delivery.repost(decision.gen.id)  # the spoilered image comes off the channel
        return f"🗑️ Removed {what}: taken off the channel."
    return f"🗑️ Removed {what}: it stays hidden."


async def press(
    interaction: discord.Interaction, action: str, gen_id: int, index: int | None, position: int
) -> None:
    """A press of Release, Remove, Ban author or Skip on a review card."""
    bot = easel(interaction)
    moderation = bot.services.moderation
    await require_moderator(interaction, moderation, f"review {action} of #{gen_id}")
    guild_id = interaction.guild_id
    if action == "skip":
        card = await review_page(bot, guild_id, position + 1)
        await interaction.response.edit_message(allowed_mentions=NO_PINGS, **card)
        return
    gen = await bot.repos.generations.get(gen_id)
    problem = moderation.not_pending(gen, gen_id, index, guild_id)
    if problem or gen is None:
        card = await review_page(bot, guild_id, position, problem or "")
        await interaction.response.edit_message(allowed_mentions=NO_PINGS, **card)
        return
    if action == "ban":
        await interaction.response.send_modal(BanModal(gen, index, position))
        return
    await interaction.response.defer()
    state = ReviewState.RELEASED if action == "release" else ReviewState.REMOVED
    decision = await moderation.decide(actor_of(interaction), guild_id, gen_id, index, state)
    note = await _after_decision(bot, decision)
    card = await review_page(bot, guild_id, position, note)
    await interaction.edit_original_response(allowed_mentions=NO_PINGS, **card)


async def ban_from_review(
    interaction: discord.Interaction,
    gen_id: int,
    index: int | None,
    position: int,
    duration: str,
    reason: str,
) -> None:
    """The Ban author form was sent: ban the author, remove the item, show the next."""
    bot = easel(interaction)
    moderation = bot.services.moderation
    await require_moderator(interaction, moderation, f"review ban of #{gen_id}")
    span = parse_duration(duration)
    gen = await bot.repos.generations.get(gen_id)
    if gen is None or gen.guild_id != interaction.guild_id or interaction.guild_id is None:
        raise UserError(f"There is no #{gen_id} in this server.")
    await interaction.response.defer()
    actor = actor_of(interaction)
    outcome = await moderation.ban(
        actor, interaction.guild_id, gen.user_id, span, reason.strip() or None, gen_id=gen.id
    )
    note = ban_sentence(outcome)
    decision = await moderation.decide(
        actor, interaction.guild_id, gen_id, index, ReviewState.REMOVED, reason="author banned"
    )
    if not isinstance(decision, str):  # still pending: removed along with the ban
        note += "\n" + await _after_decision(bot, decision)
    card = await review_page(bot, interaction.guild_id, position, note)
    await interaction.edit_original_response(allowed_mentions=NO_PINGS, **card)


def ban_sentence(outcome: BanOutcome) -> str:
    """What a moderator reads after a ban."""
    text = f"🔨 Banned {user(outcome.ban.user_id)} {outcome.length}"
    if outcome.ban.until is not None:
        text += f" (until {when(outcome.ban.until)})"
    text += ". Their new requests are refused"
    if outcome.cancelled:
        text += "; cancelled their waiting jobs " + ", ".join(f"#{i}" for i in outcome.cancelled)
    return text + "."


class ReviewButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"easel:review:(?P<action>release|remove|ban|skip):(?P<gen>\d+)"
    r":(?P<index>\d+|p):(?P<pos>\d+)",
):
    """Release / Remove / Ban author / Skip on a review card."""

    LOOKS: ClassVar[dict[str, tuple[str, str, discord.ButtonStyle]]] = {
        "release": ("Release", "✅", discord.ButtonStyle.success),
        "remove": ("Remove", "🗑️", discord.ButtonStyle.danger),
        "ban": ("Ban author", "🔨", discord.ButtonStyle.danger),
        "skip": ("Skip", "⏭️", discord.ButtonStyle.secondary),
    }

    def __init__(self, action: str, gen_id: int, index: int | None, position: int):
        label, emoji, style = self.LOOKS[action]
        where = "p" if index is None else str(index)
        super().__init__(
            discord.ui.Button(
                label=label,
                emoji=emoji,
                style=style,
                custom_id=f"easel:review:{action}:{gen_id}:{where}:{position}",
            )
        )
        self.action, self.gen_id, self.index, self.position = action, gen_id, index, position

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> Self:
        index = None if match["index"] == "p" else int(match["index"])
        return cls(match["action"], int(match["gen"]), index, int(match["pos"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await press(interaction, self.action, self.gen_id, self.index, self.position)
        except Exception as error:
            await report(interaction, error)


class BanModal(discord.ui.Modal):
    """Ban author: how long and why, then the author is banned and the item removed."""

    def __init__(self, gen: Generation, index: int | None, position: int):
        name = clip(plain(gen.user_name or str(gen.user_id)), 30)
        super().__init__(title=f"Ban {name}", timeout=10 * 60)
        self.gen_id, self.index, self.position = gen.id, index, position
        self.duration: discord.ui.TextInput[BanModal] = discord.ui.TextInput(
            label="Duration (empty = no end)",
            placeholder="30m, 2h, 7d, 1w",
            required=False,
            max_length=40,
            custom_id="duration",
        )
        self.reason: discord.ui.TextInput[BanModal] = discord.ui.TextInput(
            label="Reason (kept in the audit log)",
            style=discord.TextStyle.paragraph,
            required=False,
            max_length=300,
            custom_id="reason",
        )
        self.add_item(self.duration)
        self.add_item(self.reason)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await ban_from_review(
            interaction,
            self.gen_id,
            self.index,
            self.position,
            self.duration.value,
            self.reason.value,
        )

    # discord.py's Modal itself narrows BaseView.on_error to (interaction, error).
    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction, error: Exception
    ) -> None:
        await report(interaction, error)
