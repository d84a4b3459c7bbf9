"""What /mod shows: the prompt log and audit pages and the banned-word list."""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import discord

from bot.domain import AuditAction, AuditEntry, Generation, ReviewState, Status, plural
from bot.text import clip, literal
from bot.ui.render import jump_url

PAGE_SIZE = 10
MOD_COLOUR = discord.Colour(0xE17055)


def when(moment: datetime | None, style: str = "f") -> str:
    """A Discord timestamp: each reader sees it in their own time zone."""
    return "—" if moment is None else f"<t:{int(moment.timestamp())}:{style}>"


# --- /mod log ------------------------------------------------------------------------------


def outcome(gen: Generation) -> str:
    """The outcome of one request in a few words."""
    text = gen.status.label
    if gen.status == Status.BLOCKED:
        text += ": " + (gen.refusal_reason.label if gen.refusal_reason else "?")
        if gen.refusal_reason == "bad_input" and gen.refusal_message:
            text += f" ({literal(gen.refusal_message, 80)})"
        if gen.review:
            text += f", review {gen.review}"
    elif gen.status == Status.FAILED and gen.error:
        text += f" ({literal(gen.error, 80)})"
    if gen.images:
        text += f" · {plural(len(gen.images), 'image')}"
        flagged = [image for image in gen.images if image.flagged]
        if flagged:
            states = ", ".join(
                f"{sum(1 for i in flagged if i.review == s)} {s}"
                for s in ReviewState
                if any(i.review == s for i in flagged)
            )
            text += f" · 🛡️ {len(flagged)} flagged ({states})"
    if gen.has_upload:
        text += " · 📎 from an uploaded image"
    if gen.deleted:
        text += " · deleted"
    return text


def log_entry(gen: Generation) -> str:
    link = jump_url(gen.guild_id, gen.message_channel_id, gen.message_id)
    head = f"**#{gen.id}** {when(gen.created_at)} <@{gen.user_id}> — {outcome(gen)}"
    if link and not gen.deleted:
        head += f" · [message]({link})"
    lines = [head, f"> {literal(gen.prompt, 150)}"]
    if gen.negative:
        lines.append(f"> negative: {literal(gen.negative, 80)}")
    return "\n".join(lines)


def log_embed(
    gens: Sequence[Generation], *, page: int, pages: int, total: int, filters: str
) -> discord.Embed:
    embed = discord.Embed(title="Prompt log", colour=MOD_COLOUR)
    if gens:
        embed.description = clip("\n".join(log_entry(g) for g in gens), 4096)
    elif total:
        embed.description = f"Nothing on page {page}; there {_are(pages, 'page')}."
    else:
        embed.description = "No requests match."
    footer = f"Page {min(page, pages)} of {pages} · {plural(total, 'request')}"
    if filters:
        footer += f" · {filters}"
    embed.set_footer(text=clip(footer, 2048))
    return embed


def _are(n: int, noun: str) -> str:
    return f"is {plural(n, noun)}" if n == 1 else f"are {plural(n, noun)}"


# --- /mod audit ----------------------------------------------------------------------------


def audit_entry(entry: AuditEntry) -> str:
    action = entry.action.label if isinstance(entry.action, AuditAction) else entry.action
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
        text += f" — “{literal(entry.reason, 120)}”"
    return text


def _audit_details(entry: AuditEntry) -> str:
    d = entry.details
    parts = []
    if "word" in d:
        parts.append(f"“{literal(str(d['word']), 60)}”")
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
        embed.description = clip("\n".join(audit_entry(e) for e in entries), 4096)
    else:
        embed.description = "No actions recorded." if page == 1 else f"Nothing on page {page}."
    footer = f"Page {page}" + (" · more on the next page" if has_next else "")
    if filters:
        footer += f" · {filters}"
    embed.set_footer(text=footer)
    return embed


# --- /mod words ----------------------------------------------------------------------------


def words_message(words: Sequence[str]) -> dict[str, Any]:
    if not words:
        return {"content": "This server has no banned words. Add one with /mod words add."}
    body = "\n".join(words)
    head = (
        f"**{plural(len(words), 'banned word')}** (matched on whole words, after folding "
        "case, accents, full-width letters and invisible characters):"
    )
    if len(body) <= 1800 and "`" not in body:
        return {"content": f"{head}\n```\n{body}\n```"}
    if len(body) <= 900:  # a backtick would end the code block: each word shown as typed
        return {"content": clip("\n".join([head, *(literal(w) for w in words)]), 2000)}
    return {
        "content": head,
        "file": discord.File(io.BytesIO(body.encode()), filename="banned-words.txt"),
    }
