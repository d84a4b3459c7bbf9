"""The one safety rule: what an image the safety checker flagged shows, to whom, and when a
moderator's decision changes the channel.

- An image that was not flagged, or was released by a moderator, is public — except that in
  spoiler mode a flagged image stays behind its spoiler, released or not.
- In spoiler mode a flagged image that was not removed is posted behind a spoiler.
- Otherwise it is withheld (only moderators see it, in /mod review) or, once a moderator
  removed it, gone.
- Only a public image may be built on (reroll, remix, vary, upscale).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from bot.domain import ImageRow, ReviewState, SafetyMode


class Showing(enum.StrEnum):
    PUBLIC = "public"
    SPOILER = "spoiler"  # in the channel, behind a spoiler with a content warning
    WITHHELD = "withheld"  # waiting for a moderator; a notice in the channel
    REMOVED = "removed"  # a moderator removed it; a notice in the channel

    @property
    def in_channel(self) -> bool:
        return self in (Showing.PUBLIC, Showing.SPOILER)


def _showing(flagged: bool, review: ReviewState | None, mode: SafetyMode) -> Showing:
    if not flagged or (review == ReviewState.RELEASED and mode != SafetyMode.SPOILER):
        return Showing.PUBLIC
    if mode == SafetyMode.SPOILER and review != ReviewState.REMOVED:
        return Showing.SPOILER
    return Showing.REMOVED if review == ReviewState.REMOVED else Showing.WITHHELD


def showing(image: ImageRow, mode: SafetyMode) -> Showing:
    """How the channel shows `image` in a server with safety mode `mode`."""
    return _showing(image.flagged, image.review, mode)


@dataclass
class ResultImages:
    """A result's images, sorted by how the channel shows them."""

    public: list[ImageRow] = field(default_factory=list)
    spoilered: list[ImageRow] = field(default_factory=list)
    withheld: list[ImageRow] = field(default_factory=list)
    removed: list[ImageRow] = field(default_factory=list)


def sort_images(images: Iterable[ImageRow], mode: SafetyMode) -> ResultImages:
    sorted_images = ResultImages()
    lists = {
        Showing.PUBLIC: sorted_images.public,
        Showing.SPOILER: sorted_images.spoilered,
        Showing.WITHHELD: sorted_images.withheld,
        Showing.REMOVED: sorted_images.removed,
    }
    for image in images:
        lists[showing(image, mode)].append(image)
    return sorted_images


def repost_after(image: ImageRow, decision: ReviewState, mode: SafetyMode, *, posted: bool) -> bool:
    """Whether the result must be posted again after a moderator's decision on `image`: when
    the image enters or leaves the channel, or when it was never posted and now may be."""
    before = showing(image, mode)
    after = _showing(image.flagged, decision, mode)
    if not posted:
        return after.in_channel
    return before.in_channel != after.in_channel


def may_build_on(image: ImageRow) -> bool:
    """Others may reroll, remix, vary or upscale only a public image (not flagged, or released)."""
    return image.public
