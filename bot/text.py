"""Text as Easel writes it into Discord messages, without knowing Discord's library:
shortening to a field's limit, showing a member's prompt inline, naming members and channels.
Both the services (moderators' log lines) and `bot/ui/` use these."""

from __future__ import annotations


def clip(text: str, limit: int) -> str:
    """Shorten text to Discord's field limits, marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quote(text: str) -> str:
    """A prompt as inline text that cannot break out of its formatting."""
    return text.replace("`", "ˋ").replace("\n", " ")


def user(user_id: int) -> str:
    """A member as Discord shows one (pings only where a message's allowed mentions say so)."""
    return f"<@{user_id}>"


def channel(channel_id: int) -> str:
    return f"<#{channel_id}>"
