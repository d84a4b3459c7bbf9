"""Plain text helpers: a member's text shown literally in Discord markdown, cut to a limit."""

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.text import clip, literal, plain
from tests.fakediscord import bidi_trouble, render, visible
from tests.fakediscord.markdown import BIDI_FORMAT

# Characters that make Discord markdown, tokens and links, mixed with words, right-to-left
# letters, bidirectional controls and line breaks.
PIECES = st.sampled_from(
    [
        "*", "**", "_", "__", "~~", "||", "`", "```", "\\", "[", "]", "(", ")", "<", ">", "#",
        "-", "-# ", "> ", ">>> ", "1. ", ":", "@", "@everyone", "@here", "<@1>", "<@&2>",
        "<#3>", "<t:0>", "<t:0:R>", "</imagine:1>", "<:e:4>", "<id:browse>", "http://e.x",
        "https://e.x/a_b", "[x](http://e.x)", " ", "\n", "a", "fox", "שלום", "\u202e",
        "\u2066", "\u2069", "\u202c", "\t",
    ]
)  # fmt: skip
MEMBER_TEXT = st.lists(PIECES, max_size=40).map("".join)


def typed(text: str, *, inline: bool) -> str:
    shown = "".join(" " if ch == "\t" else ch for ch in text if ch not in BIDI_FORMAT)
    return shown.replace("\n", " ") if inline else shown


@settings(max_examples=400, deadline=None)
@given(MEMBER_TEXT, st.booleans())
def test_literal_text_renders_exactly_as_typed(text, inline):
    """Whatever a member types reads back character for character, unformatted, with no
    mention, chip or link, and no directional control left to reorder what follows."""
    markdown = literal(text, inline=inline)
    shown = render(markdown)
    assert visible(shown) == typed(text, inline=inline)
    assert all(s.kind == "text" and not s.marks for s in shown), markdown
    assert bidi_trouble(markdown) is None
    assert bidi_trouble(markdown + " — by someone") is None


@settings(max_examples=200, deadline=None)
@given(MEMBER_TEXT, st.integers(min_value=8, max_value=60))
def test_literal_text_cut_to_a_limit_stays_literal(text, limit):
    """A limit is kept, the cut is marked with "…", and what is left is still literal,
    also when `clip` cuts it again to fit a field."""
    for markdown in (literal(text, limit), clip(literal(text), limit)):
        assert len(markdown) <= limit
        shown = render(markdown)
        assert all(s.kind == "text" and not s.marks for s in shown), markdown
        assert bidi_trouble(markdown) is None
        full = typed(text, inline=True)
        if visible(shown) != full:
            assert visible(shown).endswith("…")
            assert full.startswith(visible(shown)[:-1])


def test_literal_examples():
    """Markdown is escaped where it would format; the text stays readable."""
    assert literal("**bold**") == "\\*\\*bold\\*\\*"
    assert literal("# big") == "\\# big" and literal("a # b") == "a # b"
    assert literal("see http://e.x") == "see http\\://e.x"
    assert literal("x@herex") == "x\\@herex"
    assert (
        literal("one\ntwo") == "one two" and literal("- a\n1. b", inline=False) == "\\- a\n1\\. b"
    )
    assert literal("abc \u202eevil") == "abc evil"
    assert literal("שלום") == "\u2068שלום\u2069"


def test_plain_text_and_clip():
    """Where Discord shows text as is: one line, no bidi controls, right-to-left isolated;
    long text is cut with an ellipsis."""
    assert plain("a **b**\nc\u202e") == "a **b** c"
    assert plain("שלום") == "\u2068שלום\u2069"
    assert clip("abcdef", 4) == "abc…" and clip("abc", 4) == "abc"
    assert clip("ab\\\\cd", 4) == "ab…"  # never a dangling escape
