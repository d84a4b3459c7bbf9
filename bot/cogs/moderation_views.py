"""What /mod shows: log and audit pages, the review card and its buttons, the ban modal, the
CSV export. The decisions themselves live in `bot.cogs.moderation`."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import discord

from bot import render
from bot.errors import report
from bot.store import AuditEntry, Generation, ReviewItem

if TYPE_CHECKING:
    from bot.cogs.moderation import Moderation

log = logging.getLogger(__name__)

PAGE_SIZE = 10
MOD_COLOUR = discord.Colour(0xE17055)

REFUSAL_REASONS = {
    "bad_input": "bad input",
    "banned_word": "banned word",
    "banned_user": "member banned",
    "over_cap": "too many waiting",
    "over_quota": "daily quota used",
    "paused": "queue paused",
}
# Audit actions and how /mod audit names them.
AUDIT_ACTIONS = {
    "ban": "🔨 ban",
    "unban": "🕊️ unban",
    "release": "✅ release",
    "remove": "🗑️ remove",
    "word_add": "➕ banned word added",
    "word_remove": "➖ banned word removed",
    "pause": "⏸️ pause",
    "resume": "▶️ resume",
    "safety_mode": "🛡️ safety mode",
    "log_channel": "📋 log channel",
    "export": "📤 export",
    "denied": "🚫 refused /mod (not a moderator)",
}


def when(moment: datetime | None, style: str = "f") -> str:
    """A Discord timestamp: each reader sees it in their own time zone."""
    return "—" if moment is None else f"<t:{int(moment.timestamp())}:{style}>"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --- /mod log ------------------------------------------------------------------------------


def outcome(gen: Generation) -> str:
    """The outcome of one request in a few words."""
    text = render.STATUS_MARKS.get(gen.status, gen.status)
    if gen.status == "blocked":
        text += ": " + REFUSAL_REASONS.get(gen.refusal_reason or "", gen.refusal_reason or "?")
        if gen.refusal_reason == "bad_input" and gen.refusal_message:
            text += f" ({render.clip(gen.refusal_message, 80)})"
        if gen.review:
            text += f", review {gen.review}"
    elif gen.status == "failed" and gen.error:
        text += f" ({render.clip(gen.error, 80)})"
    if gen.images:
        text += f" · {plural(len(gen.images), 'image')}"
        flagged = [image for image in gen.images if image.flagged]
        if flagged:
            states = ", ".join(
                f"{sum(1 for i in flagged if i.review == s)} {s}"
                for s in ("pending", "released", "removed")
                if any(i.review == s for i in flagged)
            )
            text += f" · 🛡️ {len(flagged)} flagged ({states})"
    if gen.deleted:
        text += " · deleted"
    return text


def log_entry(gen: Generation) -> str:
    link = render.jump_url(gen.guild_id, gen.message_channel_id, gen.message_id)
    head = f"**#{gen.id}** {when(gen.created_at)} <@{gen.user_id}> — {outcome(gen)}"
    if link and not gen.deleted:
        head += f" · [message]({link})"
    lines = [head, f"> `{render.clip(render.quote(gen.prompt), 150)}`"]
    if gen.negative:
        lines.append(f"> negative: `{render.clip(render.quote(gen.negative), 80)}`")
    return "\n".join(lines)


def log_embed(
    gens: Sequence[Generation], *, page: int, pages: int, total: int, filters: str
) -> discord.Embed:
    embed = discord.Embed(title="Prompt log", colour=MOD_COLOUR)
    if gens:
        embed.description = render.clip("\n".join(log_entry(g) for g in gens), 4096)
    elif total:
        embed.description = f"Nothing on page {page}; there {_are(pages, 'page')}."
    else:
        embed.description = "No requests match."
    footer = f"Page {min(page, pages)} of {pages} · {plural(total, 'request')}"
    if filters:
        footer += f" · {filters}"
    embed.set_footer(text=render.clip(footer, 2048))
    return embed


def _are(n: int, noun: str) -> str:
    return f"is {plural(n, noun)}" if n == 1 else f"are {plural(n, noun)}"


# --- /mod audit ----------------------------------------------------------------------------


def audit_entry(entry: AuditEntry) -> str:
    action = AUDIT_ACTIONS.get(entry.action, entry.action)
    text = f"{when(entry.created_at)} <@{entry.actor_id}> **{action}**"
    targets = []
    if entry.target_user_id:
        targets.append(f"<@{entry.target_user_id}>")
    if entry.target_generation_id:
        image = entry.details.get("image")
        targets.append(f"#{entry.target_generation_id}" + (f" image {image}" if image else ""))
    if targets:
        text += " → " + " ".join(targets)
    detail = _audit_details(entry)
    if detail:
        text += f" ({detail})"
    if entry.reason:
        text += f" — “{render.clip(render.quote(entry.reason), 120)}”"
    return text


def _audit_details(entry: AuditEntry) -> str:
    d = entry.details
    parts = []
    if "word" in d:
        parts.append(f"`{render.clip(render.quote(str(d['word'])), 60)}`")
    if "until" in d:
        parts.append("permanent" if d["until"] == "permanent" else f"until {d['until']}")
    if d.get("cancelled"):
        parts.append("cancelled " + ", ".join(f"#{i}" for i in d["cancelled"]))
    if "mode" in d:
        parts.append(f"{d.get('from', '?')} → {d['mode']}")
    if "channel_id" in d:
        parts.append(f"<#{d['channel_id']}>" if d["channel_id"] else "off")
    if "rows" in d:
        parts.append(f"{d['rows']} rows" + (f" since {d['since']}" if d.get("since") else ""))
    if "command" in d:
        parts.append(str(d["command"]))
    if d.get("prompt"):
        parts.append("refused prompt")
    return ", ".join(parts)


def audit_embed(
    entries: Sequence[AuditEntry], *, page: int, has_next: bool, filters: str
) -> discord.Embed:
    embed = discord.Embed(title="Moderator actions", colour=MOD_COLOUR)
    if entries:
        embed.description = render.clip("\n".join(audit_entry(e) for e in entries), 4096)
    else:
        embed.description = "No actions recorded." if page == 1 else f"Nothing on page {page}."
    footer = f"Page {page}" + (" · more on the next page" if has_next else "")
    if filters:
        footer += f" · {filters}"
    embed.set_footer(text=footer)
    return embed


# --- paging --------------------------------------------------------------------------------

PageRenderer = Callable[[int], Awaitable[tuple[discord.Embed, bool]]]


class Pager(discord.ui.View):
    """◀ / ▶ under an ephemeral page; the filters stay in the view (15 minutes)."""

    def __init__(
        self,
        render_page: PageRenderer,
        page: int,
        has_next: bool,
        allowed: Callable[[discord.Interaction], Awaitable[bool]],
    ):
        super().__init__(timeout=15 * 60)
        self.render_page = render_page
        self.page = page
        self.allowed = allowed
        self._update(has_next)

    def _update(self, has_next: bool) -> None:
        self.newer.disabled = self.page <= 1
        self.older.disabled = not has_next

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return await self.allowed(interaction)

    async def _show(self, interaction: discord.Interaction, page: int) -> None:
        embed, has_next = await self.render_page(page)
        self.page = page
        self._update(has_next)
        await interaction.response.edit_message(embed=embed, view=self)

    @discord.ui.button(label="◀ Newer", style=discord.ButtonStyle.secondary)
    async def newer(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await self._show(interaction, max(1, self.page - 1))

    @discord.ui.button(label="Older ▶", style=discord.ButtonStyle.secondary)
    async def older(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await self._show(interaction, self.page + 1)

    async def on_error(
        self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item[Any]
    ) -> None:
        await report(interaction, error)


# --- /mod review ---------------------------------------------------------------------------


def review_card(
    item: ReviewItem,
    *,
    position: int,
    total: int,
    matched: str | None,
    png: bytes | None,
    note: str = "",
) -> dict[str, Any]:
    """The keyword arguments of the message that shows one review item (ephemeral)."""
    gen = item.generation
    request_line = f"`{render.clip(render.quote(gen.prompt), 1500)}`"
    if item.is_prompt:
        title = f"#{gen.id} · prompt refused: " + REFUSAL_REASONS.get(
            gen.refusal_reason or "", "refused"
        )
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
            name="Negative", value=f"`{render.clip(render.quote(gen.negative), 900)}`", inline=False
        )
    author = f"<@{gen.user_id}>" + (f" ({gen.user_name})" if gen.user_name else "")
    embed.add_field(name="Author", value=render.clip(author, 1024))
    if gen.channel_id:
        embed.add_field(name="Channel", value=f"<#{gen.channel_id}>")
    embed.add_field(name="Asked", value=when(gen.created_at, "R"))
    if matched:
        embed.add_field(name="Matched word", value=f"`{render.clip(render.quote(matched), 200)}`")
    if not item.is_prompt:
        image = gen.image(item.image_index)
        if image is not None:
            embed.add_field(name="Seed", value=str(image.seed))
        if png is None:
            embed.add_field(name="Image", value="The image file is missing on disk.", inline=False)
    embed.set_footer(text=footer)
    content = (note + "\n" if note else "") + f"**Review queue** — item {position + 1} of {total}"
    files = []
    if png is not None:
        # A spoiler even here: the moderator chooses when to look (a classroom projector…).
        files.append(
            discord.File(
                io.BytesIO(png),
                filename=f"review_{gen.id}_{item.image_index + 1}.png",
                spoiler=True,
            )
        )
    view = discord.ui.View(timeout=None)
    index = item.image_index
    for action in ("release", "remove", "ban", "skip"):
        view.add_item(ReviewButton(action, gen.id, index, position))
    return {"content": content, "embed": embed, "attachments": files, "view": view}


def empty_review(note: str = "") -> dict[str, Any]:
    content = (note + "\n" if note else "") + "✅ Nothing is waiting for review."
    return {"content": content, "embed": None, "attachments": [], "view": None}


class ReviewButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=r"easel:review:(?P<action>release|remove|ban|skip):(?P<gen>\d+)"
    r":(?P<index>\d+|p):(?P<pos>\d+)",
):
    """Release / Remove / Ban author / Skip on a review card. The custom_id carries the item,
    so the buttons work after a restart; the moderator's rights are checked at every press."""

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
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: Any
    ) -> ReviewButton:
        index = None if match["index"] == "p" else int(match["index"])
        return cls(match["action"], int(match["gen"]), index, int(match["pos"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        cog: Moderation | None = interaction.client.get_cog("Moderation")  # type: ignore[attr-defined]
        try:
            if cog is None:
                raise RuntimeError("the moderation extension is not loaded")
            await cog.review_action(
                interaction, self.action, self.gen_id, self.index, self.position
            )
        except Exception as error:
            await report(interaction, error)


class BanModal(discord.ui.Modal):
    """Ban author: how long and why, then the author is banned and the item removed."""

    def __init__(self, cog: Moderation, gen: Generation, index: int | None, position: int):
        name = render.clip(gen.user_name or str(gen.user_id), 30)
        super().__init__(title=f"Ban {name}", timeout=10 * 60)
        self.cog, self.gen_id, self.index, self.position = cog, gen.id, index, position
        self.duration = discord.ui.TextInput(
            label="Duration (empty = no end)",
            placeholder="30m, 2h, 7d, 1w",
            required=False,
            max_length=40,
            custom_id="duration",
        )
        self.reason = discord.ui.TextInput(
            label="Reason (kept in the audit log)",
            style=discord.TextStyle.paragraph,
            required=False,
            max_length=300,
            custom_id="reason",
        )
        self.add_item(self.duration)
        self.add_item(self.reason)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.cog.ban_from_review(
            interaction,
            self.gen_id,
            self.index,
            self.position,
            self.duration.value,
            self.reason.value,
        )

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await report(interaction, error)


# --- /mod words ----------------------------------------------------------------------------


def words_message(words: Sequence[str]) -> dict[str, Any]:
    if not words:
        return {"content": "This server has no banned words. Add one with /mod words add."}
    body = "\n".join(words)
    head = (
        f"**{plural(len(words), 'banned word')}** (matched on whole words, after folding "
        "case, accents, full-width letters and invisible characters):"
    )
    if len(body) <= 1800:
        return {"content": f"{head}\n```\n{body}\n```"}
    return {
        "content": head,
        "file": discord.File(io.BytesIO(body.encode()), filename="banned-words.txt"),
    }


# --- /mod export ---------------------------------------------------------------------------

# Spreadsheet programs run a cell that starts with one of these as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return "" if value is None else value


def csv_bytes(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> tuple[bytes, int]:
    """The rows as CSV (UTF-8 with a byte-order mark, so spreadsheets read accents); cells that
    a spreadsheet would run as a formula get a leading apostrophe. Returns (bytes, row count)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow({key: _cell(value) for key, value in row.items()})
        count += 1
    return ("\ufeff" + out.getvalue()).encode("utf-8"), count
