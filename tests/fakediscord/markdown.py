"""What a reader sees of a message: Discord's markdown as its client renders it.

Discord renders message content, embed descriptions and embed field values with the same rules
(a simple-markdown grammar): block rules at the start of a line (``# ``, ``## ``, ``### ``
headings, ``-# `` subtext, ``> `` and ``>>> `` quotes, ``- ``, ``* `` and ``1. `` lists, fenced
code), and inline rules anywhere (``\\`` escapes, code spans, ``<@id>`` mentions, ``<@&id>``
roles, ``<#id>`` channels, ``<t:…>`` timestamps, ``</name:id>`` command chips, ``<:name:id>``
emoji, ``<id:…>`` server navigation, ``<url>``, ``@everyone``/``@here``, masked links
``[text](url)``, bare URLs, ``**``, ``__``, ``*``/``_``, ``~~``, ``||``). A backslash before any
character other than a letter, a digit or white space shows that character itself.

``render(text)`` gives the characters a reader sees, each with the formatting it is shown in
and the kind of thing it belongs to (plain text, or a mention, a timestamp, a link…), so a test
can ask whether some text is shown exactly as typed. ``bidi_trouble(text)`` says whether
bidirectional controls in the text can reorder what follows them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["Shown", "bidi_trouble", "render", "visible"]


@dataclass(frozen=True)
class Shown:
    """One character as displayed."""

    char: str
    marks: frozenset[str]  # bold, italic, underline, strike, spoiler, code, heading, quote…
    kind: str = "text"  # text, mention, role, channel, everyone, timestamp, command, emoji,
    # navigation, url, masked_link


BIDI_FORMAT = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"

_ESCAPE = re.compile(r"\\([^0-9A-Za-z\s])")
_CODE = re.compile(r"(`+)([\s\S]*?[^`])\1(?!`)")
_TOKENS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("mention", re.compile(r"<@!?(\d+)>")),
    ("role", re.compile(r"<@&(\d+)>")),
    ("channel", re.compile(r"<#(\d+)>")),
    ("timestamp", re.compile(r"<t:(-?\d{1,17})(?::([tTdDfFR]))?>")),
    ("command", re.compile(r"</((?:[-_\w]+ ?){1,3}):(\d+)>")),
    ("emoji", re.compile(r"<a?:(\w+):(\d+)>")),
    ("navigation", re.compile(r"<id:(customize|browse|guide|linked-roles)>")),
    ("url", re.compile(r"<((?:https?|steam)://[^\s>]+)>")),
    ("everyone", re.compile(r"@(everyone|here)")),
)
_MASKED_LINK = re.compile(
    r"\[((?:\[[^\]]*\]|[^\[\]]|\](?=[^\[]*\]))*)\]"
    r"\(\s*<?((?:\([^)]*\)|[^\s\\])*?)>?(?:\s+['\"]([\s\S]*?)['\"])?\s*\)"
)
_URL = re.compile(r"(?:https?|steam)://[^\s<]+[^<.,:;\"')\]\s]")
_STYLES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("bold", re.compile(r"\*\*([\s\S]+?)\*\*(?!\*)")),
    ("underline", re.compile(r"__([\s\S]+?)__(?!_)")),
    (
        "italic",
        re.compile(r"\*(?=\S)((?:\*\*|\\[\s\S]|\s+(?:\\[\s\S]|[^\s*\\]|\*\*)|[^\s*\\])+?)\*(?!\*)"),
    ),
    ("italic", re.compile(r"_((?:__|\\[\s\S]|[^\\_])+?)_\b")),
    ("strike", re.compile(r"~~([\s\S]+?)~~(?!_)")),
    ("spoiler", re.compile(r"\|\|([\s\S]+?)\|\|")),
)
_TEXT = re.compile(r"[\s\S]+?(?=[^0-9A-Za-z\s\u00c0-\uffff]|\n| {2,}\n|\w+:\S|$)")

_HEADING = re.compile(r"(#{1,3}) +(?=\S)")
_SUBTEXT = re.compile(r"-# +(?=\S)")
_QUOTE = re.compile(r"(>>> |> )")
_LIST = re.compile(r"( *)([*-]|\d+\.) +(?=\S)")


def render(text: str) -> list[Shown]:
    """The characters of `text` as Discord's client displays them, in order."""
    out: list[Shown] = []
    lines = text.split("\n")
    quoted_rest = False
    index = 0
    while index < len(lines):
        line = lines[index]
        if index:
            out.append(Shown("\n", frozenset()))
        if line.lstrip(" ").startswith("```"):
            end = _fence_end(lines, index)
            if end is not None:
                body = "\n".join(lines[index : end + 1]).strip(" ")[3:-3]
                body = body.split("\n", 1)[1] if "\n" in body else body
                out += [Shown(ch, frozenset({"code"})) for ch in body]
                index = end + 1
                continue
        marks: set[str] = {"quote"} if quoted_rest else set()
        rest = line
        matched = _QUOTE.match(rest)
        if matched and not quoted_rest:
            marks.add("quote")
            quoted_rest = matched.group(1) == ">>> "
            rest = rest[matched.end() :]
        for name, rule in (("heading", _HEADING), ("subtext", _SUBTEXT), ("list", _LIST)):
            matched = rule.match(rest)
            if matched:
                marks.add(name)
                if name == "list":
                    out += [Shown("•", frozenset(marks)), Shown(" ", frozenset(marks))]
                rest = rest[matched.end() :]
                break
        out += _inline(rest, frozenset(marks))
        index += 1
    return out


def _fence_end(lines: list[str], start: int) -> int | None:
    opened = lines[start].lstrip(" ")
    if opened.count("```") >= 2 and len(opened.strip()) > 6:
        return start
    for end in range(start + 1, len(lines)):
        if "```" in lines[end]:
            return end
    return None


def _inline(text: str, marks: frozenset[str], kind: str = "text") -> list[Shown]:
    out: list[Shown] = []
    at = 0
    while at < len(text):
        shown, at = _next(text, at, marks, kind)
        out += shown
    return out


def _next(text: str, at: int, marks: frozenset[str], kind: str) -> tuple[list[Shown], int]:
    if m := _ESCAPE.match(text, at):
        return [Shown(m.group(1), marks, kind)], m.end()
    if m := _CODE.match(text, at):
        body = m.group(2).strip(" ") if m.group(1) != "`" else m.group(2)
        return [Shown(ch, marks | {"code"}, kind) for ch in body], m.end()
    for name, rule in _TOKENS:
        if m := rule.match(text, at):
            return [Shown(ch, marks, name) for ch in _token_text(name, m)], m.end()
    if m := _MASKED_LINK.match(text, at):
        return _inline(m.group(1), marks, "masked_link"), m.end()
    if m := _URL.match(text, at):
        return [Shown(ch, marks, "url") for ch in m.group(0)], m.end()
    for name, rule in _STYLES:
        if name == "italic" and text.startswith("_", at) and at and text[at - 1].isalnum():
            continue  # `_` opens emphasis only at a word boundary
        if m := rule.match(text, at):
            return _inline(m.group(1), marks | {name}, kind), m.end()
    m = _TEXT.match(text, at)
    end = m.end() if m and m.end() > at else at + 1
    return [Shown(ch, marks, kind) for ch in text[at:end]], end


def _token_text(name: str, m: re.Match[str]) -> str:
    """What the client shows for a token instead of its source."""
    if name == "timestamp":
        moment = datetime.fromtimestamp(int(m.group(1)), UTC)
        return moment.strftime("%d %B %Y %H:%M")
    if name in ("mention", "role"):
        return f"@user{m.group(1)[-4:]}" if name == "mention" else "@role"
    if name == "channel":
        return "#channel"
    if name == "command":
        return f"/{m.group(1)}"
    if name == "emoji":
        return f":{m.group(1)}:"
    if name == "everyone":
        return m.group(0)
    return m.group(1)


def visible(shown: list[Shown]) -> str:
    """The text a reader sees (invisible bidirectional formatting left out)."""
    return "".join(s.char for s in shown if s.char not in BIDI_FORMAT)


# Explicit directional formatting (Unicode's bidirectional algorithm, rules X1–X8).
_EMBEDDINGS = "\u202a\u202b\u202d\u202e"  # LRE RLE LRO RLO: they hold until a PDF or the line end
_ISOLATES = "\u2066\u2067\u2068"  # LRI RLI FSI, closed by PDI U+2069
_RTL = re.compile(r"[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefc]")


def bidi_trouble(text: str) -> str | None:
    """Why bidirectional text in `text` can reorder what is written around it, or None.

    Trouble is text inside an embedding or override (a member's U+202E…), a directional
    control still open where a line ends, or right-to-left letters outside an isolate (they
    pull the neutral characters and numbers after them into their direction)."""
    for line in text.split("\n"):
        stack: list[str] = []
        for at, ch in enumerate(line):
            if ch in _EMBEDDINGS:
                return f"an embedding or override at {at}: {line!r}"
            if ch in _ISOLATES:
                stack.append(ch)
            elif ch == "\u2069" and stack:
                stack.pop()
            elif _RTL.match(ch) and not stack:
                return f"right-to-left text outside an isolate at {at}: {line!r}"
        if stack:
            return f"{len(stack)} isolate(s) left open: {line!r}"
    return None
