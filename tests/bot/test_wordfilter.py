"""The banned-word filter: normalising away disguises, and matching on whole words."""

from __future__ import annotations

import pytest

from bot.wordfilter import find_banned, normalise

WORDS = ["kraken", "sea monster"]


@pytest.mark.parametrize(
    "prompt",
    [
        "a kraken",
        "a KRAKEN",  # case
        "a Kraken!",  # punctuation is a word boundary
        "a ｋｒａｋｅｎ",  # full-width letters
        "a ＫＲＡＫＥＮ",
        "a kr\u200dak\u200ben",  # zero-width joiner and zero-width space
        "a kra\u00adken",  # soft hyphen
        "a k\u2060raken\ufeff",  # word joiner, byte-order mark
        "a krákèn",  # precomposed accents
        "a kra\u0301ke\u0308n",  # combining accents
        "a k̶r̶a̶k̶e̶n̶",  # combining strike-through
        "a 𝓴𝓻𝓪𝓴𝓮𝓷",  # mathematical script letters
        "a ⓚⓡⓐⓚⓔⓝ",  # circled letters
        "a ᴋʀᴀᴋᴇɴ",  # small capitals
        "a 🅺🆁🅰🅺🅴🅽",  # negative squared letters
        "a kr\u0430ken",  # a Cyrillic "а" inside a Latin word
        "a \u043aR\u0410KEN",  # Cyrillic look-alikes, upper case
        "a krαken",  # a Greek alpha inside a Latin word
        "a\u3000kraken",  # ideographic space
        "the sea   monster",  # a phrase, any spacing
        "the sea\nmonster",
        "the ｓｅａ ｍｏｎｓｔｅｒ",
    ],
)
def test_disguised_words_are_found(prompt):
    """Full-width, invisible, accented, styled and look-alike spellings match the listed word."""
    assert find_banned(prompt, WORDS) in WORDS


@pytest.mark.parametrize(
    "prompt",
    [
        "a krakens nest",  # a longer word is another word
        "krakenfish",
        "a seamonster",  # the phrase needs its space
        "an octopus",
        "Привет, мир",  # Cyrillic text is left alone
        "καλημέρα",  # and Greek
        "",
    ],
)
def test_other_words_are_not_found(prompt):
    """Matching is on word boundaries; other scripts are not folded into Latin."""
    assert find_banned(prompt, WORDS) is None


def test_word_boundaries_do_not_refuse_innocent_words():
    """A banned "ass" does not refuse "class" or "assassin", but refuses "ass"."""
    assert find_banned("a class of assassins", ["ass"]) is None
    assert find_banned("a silly ass", ["ass"]) == "ass"


def test_listed_word_is_returned_as_listed_and_normalised_too():
    """The word list itself may be written in any form; the listed spelling is returned."""
    assert find_banned("a kraken", ["ＫＲÁＫＥＮ"]) == "ＫＲÁＫＥＮ"
    assert find_banned("Straße", ["strasse"]) == "strasse"  # case folding: ß → ss


def test_empty_and_blank_words_are_ignored():
    """An empty entry never matches everything."""
    assert find_banned("anything", ["", "   "]) is None


def test_normalise_folds_to_plain_lowercase():
    """normalise() is what the moderators' word list is stored as."""
    assert normalise("ＫＲÁ\u200dＫＥＮ") == "kraken"
    assert normalise("ᴋʀᴀᴋᴇɴ") == "kraken"
    assert normalise("Привет") == "привет"


def test_spelling_tricks_are_not_guessed():
    """Digits for letters and spaced-out letters are left to the moderators (documented)."""
    assert find_banned("a kr4ken", WORDS) is None
    assert find_banned("a k r a k e n", WORDS) is None
