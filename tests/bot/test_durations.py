"""Durations and times as moderators type them (/mod ban duration, /mod log since)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.domain import UserError
from bot.durations import DurationError, describe_duration, parse_duration, parse_since

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("7d", timedelta(days=7)),
        ("1w", timedelta(weeks=1)),
        ("90s", timedelta(seconds=90)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1h 30m", timedelta(hours=1, minutes=30)),
        ("2 hours", timedelta(hours=2)),
        ("1 day, 2 hours", timedelta(days=1, hours=2)),
        ("  10 MIN ", timedelta(minutes=10)),
        ("366d", timedelta(days=366)),
    ],
)
def test_durations_parse(text, expected):
    """Compact and spelled-out forms, combined, any case."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", [None, "", "  ", "permanent", "forever"])
def test_no_duration_means_no_end(text):
    """Leaving it out (or saying so) gives None: a ban without an end."""
    assert parse_duration(text) is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("soon", "not a duration"),
        ("30", "not a duration"),
        ("m30", "not a duration"),
        ("-5m", "not a duration"),
        ("1.5h", "not a duration"),
        ("3 fortnights", "not a unit"),
        ("0m", "longer than zero"),
        ("367d", "longest duration is 366 days"),
    ],
)
def test_bad_durations_say_what_to_write(text, says):
    """One sentence that names the problem and shows the form to use."""
    with pytest.raises(DurationError, match=says) as caught:
        parse_duration(text)
    assert isinstance(caught.value, UserError)  # shown to the moderator as is


def test_since_is_a_span_back_or_a_date():
    """ "7d" means seven days before now; a date is midnight UTC; a time is UTC too."""
    assert parse_since("7d", now=NOW) == NOW - timedelta(days=7)
    assert parse_since("2025-03-01", now=NOW) == datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_since("2025-03-01 14:30", now=NOW) == datetime(2025, 3, 1, 14, 30, tzinfo=UTC)
    assert parse_since("2025-03-01T14:30+01:00", now=NOW) == datetime(
        2025, 3, 1, 13, 30, tzinfo=UTC
    )
    assert parse_since(None, now=NOW) is None and parse_since(" ", now=NOW) is None


@pytest.mark.parametrize("text", ["yesterday", "2025-13-01", "2025-02-30", "last week"])
def test_bad_since_says_what_to_write(text):
    with pytest.raises(DurationError, match="2025-03-01"):
        parse_since(text, now=NOW)


@pytest.mark.parametrize(
    ("span", "text"),
    [
        (timedelta(seconds=45), "45 s"),
        (timedelta(minutes=30), "30 min"),
        (timedelta(hours=2), "2 h"),
        (timedelta(hours=1, minutes=30), "1 h 30 min"),
        (timedelta(days=1), "1 day"),
        (timedelta(days=7, hours=3), "7 days 3 h"),
        (timedelta(0), "0 s"),
    ],
)
def test_describe_duration(span, text):
    assert describe_duration(span) == text
