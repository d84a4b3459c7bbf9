"""Durations and points in time as moderators type them: "30m", "2h", "7d", "1w", "1h30m",
or a date such as "2025-03-01" for `since`.

Errors are `UserError`s whose sentence says what to type instead.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from .domain import UserError

# Longest ban with an end; anything longer is better said as a permanent ban.
MAX_DURATION = timedelta(days=366)

_UNITS = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
}
_PART = re.compile(r"(\d+)\s*([a-z]+)")
_WHOLE = re.compile(r"(?:\d+\s*[a-z]+\s*)+")
PERMANENT_WORDS = frozenset({"", "permanent", "forever"})


class DurationError(UserError):
    """A duration or time the bot cannot read; the sentence says how to write one."""


def parse_duration(text: str | None, *, maximum: timedelta = MAX_DURATION) -> timedelta | None:
    """ "30m", "2h", "7d", "1w", "1h 30m" → a timedelta; empty or "permanent" → None."""
    raw = (text or "").strip()
    cleaned = raw.lower().replace(",", " ")
    if cleaned in PERMANENT_WORDS:
        return None
    if not _WHOLE.fullmatch(cleaned):
        raise DurationError(
            f"“{raw[:40]}” is not a duration; write it like 30m, 2h, 7d or 1w "
            "(or leave it out for no end)."
        )
    seconds = 0
    for amount, unit in _PART.findall(cleaned):
        if unit not in _UNITS:
            raise DurationError(
                f"“{unit}” is not a unit I know; use m (minutes), h (hours), d (days) or w (weeks)."
            )
        seconds += int(amount) * _UNITS[unit]
    if seconds <= 0:
        raise DurationError("A duration must be longer than zero; for example 30m or 2h.")
    if seconds > maximum.total_seconds():
        raise DurationError(
            f"The longest duration is {describe_duration(maximum)}; leave it out for no end."
        )
    return timedelta(seconds=seconds)


def parse_since(text: str | None, *, now: datetime) -> datetime | None:
    """`since` as a moderator writes it: a duration back from now ("7d") or a UTC date or time
    ("2025-03-01", "2025-03-01 14:30"). Empty → None (from the beginning)."""
    raw = (text or "").strip()
    if not raw:
        return None
    if raw[:1].isdigit() and re.fullmatch(r"\d{4}-\d{2}-\d{2}([ T].*)?", raw):
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            raise DurationError(
                f"“{raw[:40]}” is not a date I can read; write 2025-03-01 or "
                "2025-03-01 14:30 (UTC)."
            ) from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    try:
        span = parse_duration(raw, maximum=timedelta(days=3660))
    except DurationError:
        raise DurationError(
            f"“{raw[:40]}” is not a time I can read; write how far back (2h, 7d) or a date "
            "(2025-03-01)."
        ) from None
    if span is None:
        return None
    return now - span


def describe_duration(span: timedelta) -> str:
    """A short human form: "45 s", "30 min", "2 h", "1 h 30 min", "7 days"."""
    seconds = int(span.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if days:
        parts.append(f"{days} day" if days == 1 else f"{days} days")
    if hours:
        parts.append(f"{hours} h")
    if minutes:
        parts.append(f"{minutes} min")
    if secs or not parts:
        parts.append(f"{secs} s")
    return " ".join(parts)
