"""The one safety rule: what a flagged image shows in each safety mode, and when a review
decision changes the channel."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.domain import ImageRow, ReviewState, SafetyMode
from bot.services.visibility import Showing, may_build_on, repost_after, showing, sort_images

W, S = SafetyMode.WITHHOLD, SafetyMode.SPOILER
P, R, X = ReviewState.PENDING, ReviewState.RELEASED, ReviewState.REMOVED


def image(flagged: bool, review: ReviewState | None = None, index: int = 0) -> ImageRow:
    return ImageRow(1, index, 7, Path("1_0.png"), 64, 64, flagged, review)


@pytest.mark.parametrize(
    ("flagged", "review", "mode", "expected"),
    [
        (False, None, W, Showing.PUBLIC),
        (False, None, S, Showing.PUBLIC),
        (True, P, W, Showing.WITHHELD),
        (True, R, W, Showing.PUBLIC),
        (True, X, W, Showing.REMOVED),
        (True, P, S, Showing.SPOILER),
        (True, R, S, Showing.SPOILER),  # released or not, it stays behind its spoiler
        (True, X, S, Showing.REMOVED),
    ],
)
def test_what_the_channel_shows(flagged, review, mode, expected):
    """Every combination of flag, review state and safety mode."""
    assert showing(image(flagged, review), mode) is expected


def test_only_public_images_may_be_built_on():
    """Reroll, remix, vary and upscale need an image that is not flagged, or was released."""
    assert may_build_on(image(False))
    assert may_build_on(image(True, R))
    assert not may_build_on(image(True, P))
    assert not may_build_on(image(True, X))


@pytest.mark.parametrize(
    ("mode", "decision", "posted", "repost"),
    [
        (W, R, True, True),  # withheld → public: post it
        (W, X, True, False),  # withheld → removed: nothing in the channel changes
        (S, R, True, False),  # spoilered → still spoilered
        (S, X, True, True),  # spoilered → removed: take it off the channel
        (W, R, False, True),  # never posted (the post failed): post it now
        (S, R, False, True),
        (W, X, False, False),
        (S, X, False, False),
    ],
)
def test_a_review_decision_reposts_when_the_channel_changes(mode, decision, posted, repost):
    """Release and remove repost only when the image enters or leaves the channel."""
    assert repost_after(image(True, P), decision, mode, posted=posted) is repost


def test_sorting_a_result():
    """A result's images fall into the four ways the channel shows them."""
    images = [image(False, index=0), image(True, P, 1), image(True, X, 2), image(True, R, 3)]
    withhold = sort_images(images, W)
    assert [i.index for i in withhold.public] == [0, 3]
    assert [i.index for i in withhold.withheld] == [1] and [i.index for i in withhold.removed] == [
        2
    ]
    spoiler = sort_images(images, S)
    assert [i.index for i in spoiler.public] == [0]
    assert [i.index for i in spoiler.spoilered] == [1, 3]
    assert [i.index for i in spoiler.removed] == [2]
