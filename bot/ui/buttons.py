"""The buttons of status lines and results, the Zoom out / Pan menu, and the Remix form. They
are persistent: the `custom_id` carries the generation id, so they keep working for anyone in
the channel after a restart (discord.ui.DynamicItem). What a press does is `ResultActions`
(bot/ui/actions.py).

A result's rows: 0 = 🎲 ✏️ ℹ️ 🗑️, 1 = V1–V4, 2 = U1–U4, 3 = the Zoom out / Pan menu, 4 = the
Lab's menu."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, Self, cast

import discord

from bot.domain import UserError
from inference.outpaint import DIRECTIONS, ZOOMS

from .errors import report

OUTPAINT_ROW = 3
LAB_ROW = 4
# The 🔬 menu's views: value, label, emoji, what it shows.
LAB_VIEWS: tuple[tuple[str, str, str, str], ...] = (
    ("steps", "Steps", "🎞️", "the denoising film: from noise to this image"),
    ("words", "Words", "🔤", "what each word of the prompt painted"),
    ("clip", "CLIP", "📎", "how well image and prompt match, and what CLIP sees"),
    ("noise", "Noise", "🌫️", "the forward process: this image back to noise"),
)


class ResultActions(Protocol):
    """What the buttons and the Remix form ask for (implemented by `bot.ui.actions.Actions`)."""

    async def cancel(self, interaction: discord.Interaction, gen_id: int) -> None: ...
    async def reroll(self, interaction: discord.Interaction, gen_id: int) -> None: ...
    async def open_remix(self, interaction: discord.Interaction, gen_id: int) -> None: ...
    async def remix(
        self, interaction: discord.Interaction, gen_id: int, **overrides: Any
    ) -> None: ...
    async def vary(self, interaction: discord.Interaction, gen_id: int, index: int) -> None: ...
    async def upscale(self, interaction: discord.Interaction, gen_id: int, index: int) -> None: ...
    async def zoom(
        self, interaction: discord.Interaction, gen_id: int, index: int, factor: float
    ) -> None: ...
    async def pan(
        self, interaction: discord.Interaction, gen_id: int, index: int, direction: str
    ) -> None: ...
    async def info(self, interaction: discord.Interaction, gen_id: int) -> None: ...
    async def delete(self, interaction: discord.Interaction, gen_id: int) -> None: ...
    async def lab(
        self, interaction: discord.Interaction, gen_id: int, view: str, index: int
    ) -> None: ...


class _HasActions(Protocol):
    actions: ResultActions


def actions_of(interaction: discord.Interaction) -> ResultActions:
    """The bot's actions (the client is an `EaselBot`, which has them)."""
    return cast(_HasActions, interaction.client).actions


class GenerationButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"$^"):
    """A button bound to one generation (and optionally one image of it)."""

    action: ClassVar[str] = ""
    label: ClassVar[str] = ""
    emoji: ClassVar[str | None] = None
    style: ClassVar[discord.ButtonStyle] = discord.ButtonStyle.secondary
    button_row: ClassVar[int] = 0  # 🎲 ✏️ ℹ️ 🗑 share the first row; 🔀 and ⬆️ one row each

    def __init__(
        self,
        gen_id: int,
        index: int | None = None,
        *,
        label: str | None = None,
        emoji: str | None = None,
    ) -> None:
        custom_id = f"easel:{self.action}:{gen_id}" + ("" if index is None else f":{index}")
        super().__init__(
            discord.ui.Button(
                label=label if label is not None else self.label,
                emoji=emoji or self.emoji,
                style=self.style,
                custom_id=custom_id,
                row=type(self).button_row,
            )
        )
        self.gen_id = gen_id
        self.index = index

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> Self:
        index = match.groupdict().get("index")
        button = cast(discord.ui.Button[Any], item)
        return cls(
            int(match["gen"]),
            None if index is None else int(index),
            label=button.label,
            emoji=str(button.emoji) if button.emoji else None,
        )

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await self.run(interaction, actions_of(interaction))
        except Exception as error:
            await report(interaction, error)

    async def run(self, interaction: discord.Interaction, actions: ResultActions) -> None:
        raise NotImplementedError


class CancelButton(GenerationButton, template=r"easel:cancel:(?P<gen>\d+)"):
    action, label, emoji = "cancel", "Cancel", "✖️"
    style = discord.ButtonStyle.danger

    async def run(self, interaction: discord.Interaction, actions: ResultActions) -> None:
        await actions.cancel(interaction, self.gen_id)


class RerollButton(GenerationButton, template=r"easel:reroll:(?P<gen>\d+)"):
    action, label, emoji = "reroll", "Reroll", "🎲"

    async def run(self, interaction: discord.Interaction, actions: ResultActions) -> None:
        await actions.reroll(interaction, self.gen_id)


class RemixButton(GenerationButton, template=r"easel:remix:(?P<gen>\d+)"):
    action, label, emoji = "remix", "Remix", "✏️"

    async def run(self, interaction: discord.Interaction, actions: ResultActions) -> None:
        await actions.open_remix(interaction, self.gen_id)


class VaryButton(GenerationButton, template=r"easel:vary:(?P<gen>\d+):(?P<index>\d+)"):
    action, label, emoji = "vary", "", "🔀"
    button_row = 1

    async def run(self, interaction: discord.Interaction, actions: ResultActions) -> None:
        await actions.vary(interaction, self.gen_id, self.index or 0)


class UpscaleButton(GenerationButton, template=r"easel:upscale:(?P<gen>\d+):(?P<index>\d+)"):
    action, label, emoji = "upscale", "", "⬆️"
    button_row = 2

    async def run(self, interaction: discord.Interaction, actions: ResultActions) -> None:
        await actions.upscale(interaction, self.gen_id, self.index or 0)


class InfoButton(GenerationButton, template=r"easel:info:(?P<gen>\d+)"):
    action, label, emoji = "info", "Info", "ℹ️"

    async def run(self, interaction: discord.Interaction, actions: ResultActions) -> None:
        await actions.info(interaction, self.gen_id)


class DeleteButton(GenerationButton, template=r"easel:delete:(?P<gen>\d+)"):
    action, label, emoji = "delete", "Delete", "🗑️"

    async def run(self, interaction: discord.Interaction, actions: ResultActions) -> None:
        await actions.delete(interaction, self.gen_id)


class OutpaintSelect(
    discord.ui.DynamicItem[discord.ui.Select[Any]], template=r"easel:outpaint:(?P<gen>\d+)"
):
    """🔭 Zoom out (2×, 1.5×) or pan (⬅ ➡ ⬆ ⬇) one image of a result: one menu on row 3, since
    six actions for each of up to four images do not fit Discord's five buttons a row."""

    def __init__(self, gen_id: int, indexes: Sequence[int] = (0,)) -> None:
        several = len(indexes) > 1
        options = []
        for index in indexes:
            prefix = f"Image {index + 1} · " if several else ""
            for name, factor in ZOOMS.items():
                options.append(
                    discord.SelectOption(
                        label=f"{prefix}Zoom out {factor:g}×",
                        value=f"zoom:{name}:{index}",
                        emoji="🔭",
                    )
                )
            for direction, arrow in DIRECTIONS.items():
                options.append(
                    discord.SelectOption(
                        label=f"{prefix}Pan {direction}",
                        value=f"pan:{direction}:{index}",
                        emoji=arrow,
                    )
                )
        super().__init__(
            discord.ui.Select(
                custom_id=f"easel:outpaint:{gen_id}",
                placeholder="🔭 Zoom out or pan" + (" an image…" if several else "…"),
                options=options or [discord.SelectOption(label="—", value="none")],
            ),
            row=OUTPAINT_ROW,
        )
        self.gen_id = gen_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> Self:
        # The chosen value arrives with the interaction; the options need not be rebuilt.
        return cls(int(match["gen"]), ())

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            values = self.item.values
            parts = (values[0] if values else "").split(":")
            if len(parts) != 3 or not parts[2].isdigit():
                raise UserError("Pick a zoom or a pan direction from the menu.")
            action, what, index = parts
            actions = actions_of(interaction)
            if action == "zoom" and what in ZOOMS:
                await actions.zoom(interaction, self.gen_id, int(index), ZOOMS[what])
            elif action == "pan" and what in DIRECTIONS:
                await actions.pan(interaction, self.gen_id, int(index), what)
            else:
                raise UserError("Pick a zoom or a pan direction from the menu.")
        except Exception as error:
            await report(interaction, error)


class LabSelect(discord.ui.DynamicItem[discord.ui.Select[Any]], template=r"easel:lab:(?P<gen>\d+)"):
    """🔬 Lab: Steps, Words, CLIP or Noise of one image of a result, as a new job of whoever
    picked it. One menu on row 4: four views for each of up to four images."""

    def __init__(self, gen_id: int, indexes: Sequence[int] = (0,)) -> None:
        several = len(indexes) > 1
        options = [
            discord.SelectOption(
                label=(f"Image {index + 1} · " if several else "") + label,
                value=f"{view}:{index}",
                emoji=emoji,
                description=description,
            )
            for index in indexes
            for view, label, emoji, description in LAB_VIEWS
        ]
        super().__init__(
            discord.ui.Select(
                custom_id=f"easel:lab:{gen_id}",
                placeholder="🔬 Lab: how was this made?",
                options=options or [discord.SelectOption(label="—", value="none")],
                row=LAB_ROW,
            )
        )
        self.gen_id = gen_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> Self:
        # The picked value comes with the interaction; the options need not be rebuilt.
        return cls(int(match["gen"]), ())

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            values = self.item.values
            view, _, index = (values[0] if values else "").partition(":")
            if view not in {v[0] for v in LAB_VIEWS} or not index.isdigit():
                raise UserError("Pick one of the lab's views from the menu.")
            await actions_of(interaction).lab(interaction, self.gen_id, view, int(index))
        except Exception as error:
            await report(interaction, error)


PERSISTENT_ITEMS: tuple[type[discord.ui.DynamicItem[Any]], ...] = (
    CancelButton,
    RerollButton,
    RemixButton,
    VaryButton,
    UpscaleButton,
    InfoButton,
    DeleteButton,
    OutpaintSelect,
    LabSelect,
)


def cancel_view(gen_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(gen_id))
    return view


def result_view(
    gen_id: int,
    public_indexes: Sequence[int],
    *,
    can_derive: bool = True,
    max_pixels: int = 0,
    size: tuple[int, int] = (0, 0),
    lab: bool = True,
) -> discord.ui.View:
    """🎲 ✏️ ℹ️ 🗑 on the first row, then 🔀 V1…V4 and ⬆️ U1…U4 for each shown image, then
    the Zoom out / Pan menu (row 3) and the 🔬 Lab menu (row 4) for them."""
    view = discord.ui.View(timeout=None)
    if can_derive:
        view.add_item(RerollButton(gen_id))
        view.add_item(RemixButton(gen_id))
    view.add_item(InfoButton(gen_id))
    view.add_item(DeleteButton(gen_id))
    if can_derive and public_indexes:
        for index in public_indexes:
            view.add_item(VaryButton(gen_id, index, label=f"V{index + 1}"))
        upscalable = not max_pixels or size[0] * size[1] * 4 <= max_pixels
        if upscalable:
            for index in public_indexes:
                view.add_item(UpscaleButton(gen_id, index, label=f"U{index + 1}"))
        # Offered whatever the size: one that would be too large says so when picked.
        view.add_item(OutpaintSelect(gen_id, public_indexes))
    if lab and public_indexes:
        view.add_item(LabSelect(gen_id, public_indexes))
    return view


class RemixModal(discord.ui.Modal):
    """✏️ Remix: the prompt and negative prefilled; same seed and settings as the source."""

    def __init__(self, gen_id: int, prompt: str, negative: str, max_chars: int) -> None:
        super().__init__(title=f"Remix #{gen_id}", timeout=15 * 60)
        self.gen_id = gen_id
        limit = min(max_chars, 4000)
        self.prompt: discord.ui.TextInput[RemixModal] = discord.ui.TextInput(
            label="Prompt",
            style=discord.TextStyle.paragraph,
            default=prompt[:limit],
            max_length=limit,
            required=True,
        )
        self.negative: discord.ui.TextInput[RemixModal] = discord.ui.TextInput(
            label="Negative prompt",
            style=discord.TextStyle.paragraph,
            default=negative[:limit] or None,
            max_length=limit,
            required=False,
        )
        self.add_item(self.prompt)
        self.add_item(self.negative)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await actions_of(interaction).remix(
            interaction, self.gen_id, prompt=self.prompt.value, negative=self.negative.value
        )

    # discord.py's Modal itself narrows BaseView.on_error to (interaction, error).
    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction, error: Exception
    ) -> None:
        await report(interaction, error)
