"""The one text normalisation used for scoring (WER, CER, answer matching) and for the judge ASR's targets.

Scores must not punish a system for writing "Forty-two!" where the reference says "forty two", so both sides
go through :func:`normalize_text` before they are compared. The rules, applied in this order:

1. **Unicode NFKC** (full-width letters, ligatures, superscripts become plain characters), then typographic
   apostrophes (``’``, ``‘``, ``ʼ``, ``＇``, `````) become ``'``.
2. **Lowercase** (``str.lower``).
3. **Numbers become words** (the speech world writes numbers as words, and a recogniser hears words):
   thousands separators inside a number are dropped (``1,000`` → ``1000``); integers 0..999 are spelled in
   American style without hyphens or "and" (``342`` → ``three hundred forty two``, leading zeros ignored:
   ``007`` → ``seven``); ordinals 1st..999th likewise (``21st`` → ``twenty first``); a decimal point between
   digits is read ``point`` followed by the digits one by one (``3.25`` → ``three point two five``); digit
   runs of 1000 and more stay as digits (no spoken form is agreed for them). Digits glued to letters are split
   from them first (``3d`` → ``three d``).
4. **"hundred and"** followed by a number word loses the "and" (``one hundred and five`` →
   ``one hundred five``), so British and American spellings of a number score as equal.
5. **Punctuation and symbols are removed**: every character of Unicode category P* or S* becomes a space,
   except an apostrophe between two letters/digits (``don't``, ``o'clock`` keep it; ``'quoted'`` and
   ``dogs'`` lose it). A space, not nothing, so ``black/white`` and ``e-mail`` stay two words.
6. **Whitespace is collapsed**: runs of any whitespace become one space; no space at either end.

The result contains no uppercase, no punctuation other than in-word apostrophes, and single spaces; it may be
empty (e.g. for ``"?!"``), which the metrics handle explicitly.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["MAX_SPELLED_NUMBER", "normalize_text", "number_to_words", "ordinal_to_words"]

MAX_SPELLED_NUMBER = 999
"""Largest integer :func:`normalize_text` spells out; larger digit runs are kept as digits."""

ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")  # fmt: skip
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
# Ordinals that are not "cardinal + th".
_IRREGULAR_ORDINALS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                       "nine": "ninth", "twelve": "twelfth"}  # fmt: skip
_NUMBER_WORDS = frozenset(ONES) | frozenset(TENS[2:])
_APOSTROPHES = {"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\uff07": "'", "`": "'"}
_APOSTROPHE_TABLE = str.maketrans(_APOSTROPHES)

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_DIGIT_LETTER = re.compile(r"(?<=\d)(?=[^\W\d_])|(?<=[^\W\d_])(?=\d)")
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b")
_DECIMAL = re.compile(r"(\d+)\.(\d+)")
_INTEGER = re.compile(r"\d+")
_HUNDRED_AND = re.compile(r"\bhundred and (?=(" + "|".join(sorted(_NUMBER_WORDS)) + r")\b)")


def number_to_words(value: int) -> str:
    """Spell an integer 0..999 in American style without hyphens or "and" (``342`` → ``three hundred forty two``).

    Raises:
        ValueError: ``value`` is outside 0..:data:`MAX_SPELLED_NUMBER`.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SPELLED_NUMBER:
        raise ValueError(f"number_to_words spells integers 0..{MAX_SPELLED_NUMBER}, got {value!r}")
    hundreds, rest = divmod(value, 100)
    words = [ONES[hundreds], "hundred"] if hundreds else []
    if rest or not hundreds:
        if rest < 20:
            words.append(ONES[rest])
        else:
            tens, ones = divmod(rest, 10)
            words.append(TENS[tens])
            if ones:
                words.append(ONES[ones])
    return " ".join(words)


def ordinal_to_words(value: int) -> str:
    """Spell an ordinal 1..999 (``21`` → ``twenty first``, ``100`` → ``one hundredth``).

    Raises:
        ValueError: ``value`` is outside 1..:data:`MAX_SPELLED_NUMBER`.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SPELLED_NUMBER:
        raise ValueError(f"ordinal_to_words spells integers 1..{MAX_SPELLED_NUMBER}, got {value!r}")
    *head, last = number_to_words(value).split()
    if last in _IRREGULAR_ORDINALS:
        last = _IRREGULAR_ORDINALS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def _spell_integer(match: re.Match[str]) -> str:
    digits = match.group(0)
    value = int(digits)
    return f" {number_to_words(value)} " if value <= MAX_SPELLED_NUMBER else f" {digits} "


def _spell_ordinal(match: re.Match[str]) -> str:
    value = int(match.group(1))
    if 1 <= value <= MAX_SPELLED_NUMBER:
        return f" {ordinal_to_words(value)} "
    return match.group(0)


def _spell_decimal(match: re.Match[str]) -> str:
    fraction = " ".join(ONES[int(d)] for d in match.group(2))
    return f"{match.group(1)} point {fraction}"


def _is_word_char(char: str) -> bool:
    return char.isalnum()


def _strip_punctuation(text: str) -> str:
    out = []
    for i, char in enumerate(text):
        if char == "'":
            inside = 0 < i < len(text) - 1 and _is_word_char(text[i - 1]) and _is_word_char(text[i + 1])
            out.append(char if inside else " ")
        elif unicodedata.category(char)[0] in ("P", "S"):
            out.append(" ")
        else:
            out.append(char)
    return "".join(out)


def normalize_text(text: str) -> str:
    """Normalise ``text`` for scoring with the rules in this module's docstring.

    Args:
        text: Any text (a reference, a hypothesis, an answer).

    Returns:
        Lowercase words separated by single spaces; possibly empty.

    Raises:
        TypeError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}: {text!r:.60}")
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHE_TABLE).lower()
    text = _THOUSANDS.sub("", text)
    text = _DIGIT_LETTER.sub(" ", text)
    # "21 st" after the split above: rejoin ordinal suffixes so they are read as ordinals, not letters.
    text = re.sub(r"(\d) (st|nd|rd|th)\b", r"\1\2", text)
    text = _ORDINAL.sub(_spell_ordinal, text)
    text = _DECIMAL.sub(_spell_decimal, text)
    text = _INTEGER.sub(_spell_integer, text)
    text = _HUNDRED_AND.sub("hundred ", text)
    text = _strip_punctuation(text)
    return " ".join(text.split())
