"""Autocomplete for the `generation` options of /remix, /info, /delete and /cancel: the member's
recent images (or, for a moderator where moderators act on anyone's, the server's) as
`#N — prompt…`, narrowed by what has been typed: a number matches the start of the id, words
match the prompt."""

from __future__ import annotations

from collections.abc import Sequence

import discord
from discord import app_commands

from bot.domain import Generation, Status
from bot.text import clip, plain

from .client import easel
from .permissions import interaction_is_moderator

CHOICES = 25  # Discord shows at most 25 suggestions
NAME_LIMIT = 100  # and cuts nothing itself: a longer name is refused


def choice(gen_id: int, prompt: str, note: str = "") -> app_commands.Choice[int]:
    """`#N — prompt…` within Discord's 100 characters; the prompt shown as typed (choice names
    are plain text: no markdown to escape)."""
    head, tail = f"#{gen_id} — ", f" ({note})" if note else ""
    body = clip(plain(prompt), NAME_LIMIT - len(head) - len(tail))
    return app_commands.Choice(name=head + body + tail, value=gen_id)


def _choices(gens: Sequence[Generation]) -> list[app_commands.Choice[int]]:
    return [choice(gen.id, gen.prompt) for gen in gens]


def _is_number(typed: str) -> bool:
    digits = typed.strip().removeprefix("#").strip()
    return digits.isascii() and digits.isdigit()


async def _recent(
    interaction: discord.Interaction,
    typed: str,
    *,
    statuses: tuple[Status, ...] = (),
    anyones: bool,
    visible_only: bool = True,
) -> list[app_commands.Choice[int]]:
    """This server's generations: the member's own, or anyone's when `anyones`."""
    history = easel(interaction).repos.history
    gens = await history.suggestions(
        guild_id=interaction.guild_id,
        user_id=None if anyones else interaction.user.id,
        typed=typed,
        statuses=statuses,
        visible_only=visible_only,
        limit=CHOICES,
    )
    return _choices(gens)


def _moderator(interaction: discord.Interaction) -> bool:
    return interaction_is_moderator(interaction, easel(interaction).settings.moderation)


async def remixable(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[int]]:
    """/remix: the member's finished images; a number typed finds anyone's in the server
    (everyone may remix everyone's)."""
    return await _recent(
        interaction, str(current), statuses=(Status.DONE,), anyones=_is_number(str(current))
    )


async def informative(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[int]]:
    """/info: the member's images (a number typed: anyone's); for a moderator, anything in
    the server's log, refused requests included."""
    if _moderator(interaction):
        return await _recent(interaction, str(current), anyones=True, visible_only=False)
    return await _recent(interaction, str(current), anyones=_is_number(str(current)))


async def deletable(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[int]]:
    """/delete: the member's images in the channel; a moderator's: anyone's."""
    return await _recent(interaction, str(current), anyones=_moderator(interaction))


async def cancellable(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[int]]:
    """/cancel: the member's own queued and running jobs, first to run first."""
    typed = str(current).strip()
    number = typed.removeprefix("#").strip()
    folded = typed.casefold()
    found = []
    for job in easel(interaction).scheduler.user_jobs(interaction.user.id):
        if _is_number(typed):
            if not str(job.gen_id).startswith(number):
                continue
        elif folded and folded not in job.request.prompt.casefold():
            continue
        where = "running" if job.status == Status.RUNNING else f"position {job.position}"
        found.append(choice(job.gen_id, job.request.prompt, where))
    return found[:CHOICES]
