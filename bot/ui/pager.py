"""Paging through a list (the /history pages, the /mod log and audit pages): ◀ Newer / Older ▶.

`Pager` keeps a page renderer in memory for 15 minutes (the /mod pages, whose filters do not
fit in a custom_id); `page_button` gives persistent buttons whose custom_ids carry the page
(the /history pages, which keep working after a restart).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import discord

from .errors import report

NEWER, OLDER = "◀ Newer", "Older ▶"

# page number → (the page's embed, whether there is a next page)
PageRenderer = Callable[[int], Awaitable[tuple[discord.Embed, bool]]]


def page_count(total: int, page_size: int) -> int:
    return max(1, -(-total // page_size))


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

    @discord.ui.button(label=NEWER, style=discord.ButtonStyle.secondary)
    async def newer(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await self._show(interaction, max(1, self.page - 1))

    @discord.ui.button(label=OLDER, style=discord.ButtonStyle.secondary)
    async def older(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await self._show(interaction, self.page + 1)

    async def on_error(
        self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item[Any]
    ) -> None:
        await report(interaction, error)


def page_button(
    direction: str, custom_id: str, *, disabled: bool = False
) -> discord.ui.Button[Any]:
    """A persistent ◀ Newer (`direction` "p") or Older ▶ ("n") button; its custom_id names the
    page it opens."""
    return discord.ui.Button(
        label=NEWER if direction == "p" else OLDER,
        style=discord.ButtonStyle.secondary,
        custom_id=custom_id,
        disabled=disabled,
    )
