"""Banned words, matched after normalising away the usual tricks.

NFKC folds full-width and other compatibility forms ("ｆｏｘ" → "fox"), case folding ignores
case, and dropping format characters (zero-width joiners and spaces) and combining marks
(accents, "f̶o̶x̶") stops those from hiding a word. Matching is on word boundaries, so a
banned "ass" does not refuse "class".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# Characters some people use in place of spaces or to glue letters: treat as nothing.
_INVISIBLE = {"\u00ad", "\u034f", "\u115f", "\u1160", "\u3164", "\uffa0"}


def normalise(text: str) -> str:
    """Fold text so that look-alike spellings of a word compare equal."""
    text = unicodedata.normalize("NFKC", text).casefold()
    decomposed = unicodedata.normalize("NFKD", text)
    kept = [
        ch
        for ch in decomposed
        if unicodedata.category(ch) not in ("Mn", "Me", "Cf") and ch not in _INVISIBLE
    ]
    return unicodedata.normalize("NFKC", "".join(kept))


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
