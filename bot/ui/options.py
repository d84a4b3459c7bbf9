"""The options of the commands that make images, with their bounds and choices from the settings,
so Discord's own form enforces them and /imagine and /remix offer them alike.

discord.py reads a command's options from its callback's signature; since the bounds are only
known once the settings are read, the commands are built at start-up with `build_command`,
whose callback carries an `inspect.Signature` of the options (Python's own way for a callable to
state its signature).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import discord
from discord import app_commands

from bot.settings import GenerationSettings
from inference.request import ASPECTS, MAX_SEED

Handler = Callable[[discord.Interaction, dict[str, Any]], Awaitable[None]]
# An autocomplete callback: (interaction, what has been typed) -> up to 25 choices.
Autocomplete = Callable[
    [discord.Interaction, str], Coroutine[Any, Any, list[app_commands.Choice[int]]]
]


@dataclass(frozen=True)
class Option:
    name: str
    annotation: Any  # a type, or an `app_commands.Range[...]` with its bounds
    description: str
    required: bool = False
    choices: Sequence[app_commands.Choice[str]] = ()
    autocomplete: Autocomplete | None = None


def _choices(values: Sequence[str]) -> list[app_commands.Choice[str]]:
    return [app_commands.Choice(name=value, value=value) for value in values]


def prompt_options(g: GenerationSettings) -> list[Option]:
    """The prompt and the negative prompt, as long as the settings allow."""
    longest = min(g.max_prompt_chars, 6000)
    return [
        Option("prompt", app_commands.Range[str, 1, longest], "What to draw", required=True),
        Option("negative", app_commands.Range[str, 0, longest], "What to keep out of the image"),
    ]


def recipe_options(g: GenerationSettings) -> list[Option]:
    """Seed, steps, guidance, aspect, count and sampler, in the order /imagine and /remix show
    them."""
    return [
        Option(
            "seed",
            app_commands.Range[int, 0, MAX_SEED],
            f"0–{MAX_SEED}; the same seed and settings give the same image",
        ),
        Option(
            "steps",
            app_commands.Range[int, g.min_steps, g.max_steps],
            "Denoising steps: more is slower and often finer",
        ),
        Option(
            "guidance",
            app_commands.Range[float, g.min_guidance, g.max_guidance],
            "How closely to follow the prompt (CFG scale)",
        ),
        Option("aspect", str, "Shape of the image", choices=_choices(list(ASPECTS))),
        Option(
            "count", app_commands.Range[int, 1, g.max_count], "How many images (each its own seed)"
        ),
        Option("sampler", str, "The sampling method", choices=_choices(g.samplers)),
    ]


def build_command(
    name: str, description: str, options: Sequence[Option], handler: Handler
) -> app_commands.Command[Any, Any, None]:
    """A slash command with these options; `handler(interaction, values)` gets the values given
    (left-out options are None)."""

    async def callback(interaction: discord.Interaction, /, **values: Any) -> None:
        await handler(interaction, values)

    parameters = [
        inspect.Parameter(
            "interaction", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=discord.Interaction
        )
    ]
    for option in options:
        parameters.append(
            inspect.Parameter(
                option.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if option.required else None,
                annotation=option.annotation if option.required else Optional[option.annotation],  # noqa: UP045
            )
        )
    callback.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    app_commands.describe(**{o.name: o.description for o in options})(callback)
    choices = {o.name: list(o.choices) for o in options if o.choices}
    if choices:
        app_commands.choices(**choices)(callback)
    suggested = {o.name: o.autocomplete for o in options if o.autocomplete is not None}
    if suggested:
        app_commands.autocomplete(**suggested)(callback)
    return app_commands.Command(name=name, description=description, callback=callback)
