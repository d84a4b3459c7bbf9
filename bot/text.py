"""Text as Easel writes it into Discord messages, without knowing Discord's library:
shortening to a field's limit, showing a member's text literally, naming members and channels.
Both the services (moderators' log lines) and `bot/ui/` use these."""

from __future__ import annotations

import re
import unicodedata

# Explicit bidirectional formatting: embeddings and overrides (U+202A–U+202E) and isolates
# (U+2066–U+2069). In a member's text they could reorder what Easel writes after it (the
# author's name, the status), so they are dropped from anything shown.
_BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_FSI, _PDI = "\u2068", "\u2069"  # first strong isolate … pop directional isolate
_ISOLATE_OPENERS = "\u2066\u2067\u2068"
_RTL_CLASSES = frozenset({"R", "AL", "AN", "RLE", "RLO", "RLI"})

# Discord markdown that works anywhere in a line: emphasis, underline, strike, spoilers, code,
# masked links, and every `<…>` token (mentions, <t:…> timestamps, </cmd:id> command chips,
# custom emoji, <url>). A backslash before any of them shows the character itself.
_INLINE_MARKUP = frozenset("\\*_~|`[]<>@")
# Markdown that only works at the start of a line (after spaces): headings, subtext, quotes,
# lists.
_LINE_START = re.compile(r"^([ \t]*)(#|-|\*|>|\d+\.)")
# A URL scheme: Discord links (and previews) `http://…`; an escaped colon keeps it plain text.
_SCHEME = re.compile(r"(?<=\w):(?=//)")


def clip(text: str, limit: int) -> str:
    """Shorten text to Discord's field limits, marking the cut. A cut through `literal` text
    stays literal: no dangling escape, and isolates it opened are closed again."""
    if len(text) <= limit:
        return text
    keep = limit - 1
    while True:
        cut = text[: max(0, keep)]
        if (len(cut) - len(cut.rstrip("\\"))) % 2:
            cut = cut[:-1]  # a lone backslash would escape the ellipsis
        shown = cut + "…" + _PDI * _open_isolates(cut)
        if len(shown) <= limit or keep <= 0:
            return shown
        keep -= len(shown) - limit


def _open_isolates(text: str) -> int:
    depth = 0
    for ch in text:
        if ch in _ISOLATE_OPENERS:
            depth += 1
        elif ch == _PDI and depth:
            depth -= 1
    return depth


def plain(text: str) -> str:
    """A member's text where Discord shows text as it is, without markdown (autocomplete
    choices, embed footers): one line, no control characters, and set apart as an isolate when
    it holds right-to-left writing, so it cannot reorder the text around it."""
    cleaned = "".join(_shown_char(ch, inline=True) for ch in text)
    return _isolated(cleaned)


def literal(text: str, limit: int | None = None, *, inline: bool = True) -> str:
    """A member's text (a prompt, a name, a reason) shown exactly as typed in Discord markdown:
    every character that would format, link, mention or make a `<…>` chip is escaped, so
    `**x**`, `||x||`, `# x`, `<t:0>`, `</cmd:1>`, `[x](http://…)` and `@everyone` read as
    typed and nothing becomes a masked link or looks like a mention. Bidirectional controls are
    dropped and right-to-left text is isolated. `inline` puts it on one line (newlines become
    spaces); `limit` bounds the result's length (cut with "…", never through an escape)."""
    cleaned = "".join(_shown_char(ch, inline=inline) for ch in text)
    lines = cleaned.split("\n")
    pieces: list[str] = []
    for number, line in enumerate(lines):
        if number:
            pieces.append("\n")
        pieces += _escaped_line(line)
    isolate = _needs_isolate(cleaned)
    # Each line is its own isolate: an isolate left open at a line break would leak into the
    # lines after it.
    budget = None if limit is None else limit - (2 * len(lines) if isolate else 0)
    out: list[str] = []
    used = 0
    for index, piece in enumerate(pieces):
        rest = len(piece) if index == len(pieces) - 1 else len(piece) + 1  # room for "…"
        if budget is not None and used + rest > budget:
            out.append("…")
            break
        out.append(piece)
        used += len(piece)
    shown = "".join(out)
    if not isolate:
        return shown
    return "\n".join(_FSI + line + _PDI if line else line for line in shown.split("\n"))


def _shown_char(ch: str, *, inline: bool) -> str:
    if ch in _BIDI_CONTROLS:
        return ""
    if ch == "\n" and not inline:
        return ch
    if ch in "\r\n\t" or unicodedata.category(ch) == "Cc":
        return " "
    return ch


def _escaped_line(line: str) -> list[str]:
    """The line's characters, each as it must be written (escaped where it would format)."""
    pieces = [("\\" + ch) if ch in _INLINE_MARKUP else ch for ch in line]
    start = _LINE_START.match(line)
    if start:
        at = len(start.group(1))
        marker = start.group(2)
        if marker[-1] == ".":  # "1. " starts a list: escape its dot
            at += len(marker) - 1
        if not pieces[at].startswith("\\"):
            pieces[at] = "\\" + pieces[at]
    for match in _SCHEME.finditer(line):
        pieces[match.start()] = "\\:"
    return pieces


def _needs_isolate(text: str) -> bool:
    return any(unicodedata.bidirectional(ch) in _RTL_CLASSES or ch in "\u200f\u061c" for ch in text)


def _isolated(text: str) -> str:
    return _FSI + text + _PDI if _needs_isolate(text) else text


def user(user_id: int) -> str:
    """A member as Discord shows one (pings only where a message's allowed mentions say so)."""
    return f"<@{user_id}>"


def channel(channel_id: int) -> str:
    return f"<#{channel_id}>"
