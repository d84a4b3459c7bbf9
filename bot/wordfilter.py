"""Banned words, matched after normalising away the usual tricks.

NFKC folds full-width and other compatibility forms ("ｆｏｘ" → "fox"), case folding ignores
case, and dropping format characters (zero-width joiners and spaces) and combining marks
(accents, "f̶o̶x̶") stops those from hiding a word. Letters that only look Latin are read as
the Latin letter: small capitals ("ᴋʀᴀᴋᴇɴ") and enclosed letters ("🅺🆁🅰🅺🅴🅽") always, and
Cyrillic or Greek look-alikes inside a word that also has Latin letters ("krаken" with a
Cyrillic "а"), so that Russian or Greek text is left as it is. Matching is on word boundaries,
so a banned "ass" does not refuse "class". Spelling tricks ("kr4ken", "k r a k e n") are not
caught: a moderator adds those spellings when they show up in /mod log.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# Characters some people use in place of spaces or to glue letters: treat as nothing.
_INVISIBLE = {"\u00ad", "\u034f", "\u115f", "\u1160", "\u3164", "\uffa0"}

# Letters of the Latin script (and symbols) that only look like a-z: always read as a-z.
_LATIN_LOOKALIKES = str.maketrans(
    {
        **dict(zip("ᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘʀꜱᴛᴜᴠᴡʏᴢɑɡıȷ", "abcdefghijklmnoprstuvwyzagij", strict=True)),
        # Negative circled, negative squared and regional-indicator letters (NFKC keeps them).
        **{
            chr(start + i): chr(ord("a") + i)
            for start in (0x1F150, 0x1F170, 0x1F1E6)
            for i in range(26)
        },
    }
)
# Cyrillic and Greek letters (after case folding) that look like Latin ones; read as Latin only
# inside a word that also has Latin letters.
_SCRIPT_LOOKALIKES = str.maketrans(
    dict(zip("авсеһіјкмнопрѕтухԁԛԝαβεζικορτυχγ", "abcehijkmhonpstyxdqwabezikoptuxy", strict=True))
)
_WORD = re.compile(r"\w+")


def _read_lookalikes(text: str) -> str:
    text = text.translate(_LATIN_LOOKALIKES)

    def fold(match: re.Match[str]) -> str:
        word = match.group()
        return word.translate(_SCRIPT_LOOKALIKES) if re.search(r"[a-z]", word) else word

    return _WORD.sub(fold, text)


def normalise(text: str) -> str:
    """Fold text so that look-alike spellings of a word compare equal."""
    text = unicodedata.normalize("NFKC", text).casefold()
    decomposed = unicodedata.normalize("NFKD", text)
    kept = [
        ch
        for ch in decomposed
        if unicodedata.category(ch) not in ("Mn", "Me", "Cf") and ch not in _INVISIBLE
    ]
    return _read_lookalikes(unicodedata.normalize("NFKC", "".join(kept)))


def find_banned(prompt: str, words: Iterable[str]) -> str | None:
    """The first banned word (as listed) that appears in the prompt, or None."""
    text = normalise(prompt)
    for word in words:
        folded = normalise(word).strip()
        if not folded:
            continue
        pattern = r"(?<!\w)" + r"\s+".join(map(re.escape, folded.split())) + r"(?!\w)"
        if re.search(pattern, text):
            return word
    return None
