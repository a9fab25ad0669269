"""Turn text cleaning: mojibake repair (ftfy) and undoing tokenised spacing.

DailyDialog was tokenised (``Say , Jim , how about ... ?``, ``can ' t``, ``I ’ Ve``). The rules
below join what tokenisation split apart and nothing else: abbreviations (``U.S.``), decimals
(``3.5``), times (``10:30``), URLs and e-mail addresses come out as they went in. The rules are
idempotent and harmless on untokenised text, so every source goes through the same function.
"""

from __future__ import annotations

import re

import ftfy

# URLs, bare domains and e-mail addresses are set aside before the rules run and put back after.
_PROTECTED = re.compile(
    r"""
    (?:https?://|www\.)[^\s]+?(?=[.,!?;:)\]'"]*(?:\s|$))          # URL (trailing punctuation excluded)
    | [\w.+-]+@[\w-]+(?:\.[\w-]+)+                                 # e-mail address
    | \b(?:[A-Za-z0-9-]+\.)+(?:com|org|net|edu|gov|io|info|co|uk|cn|tw|jp|de)\b  # bare domain
    """,
    re.VERBOSE | re.IGNORECASE,
)
_PLACEHOLDER = re.compile("\x00(\\d+)\x00")

# Punctuation that tokenisation put in front of a space: ``Jim ,`` ``fitness .`` ``now ?``.
# Only when the mark ends a word (followed by space, end or more punctuation), so ``.5`` and
# emoticons such as ``:)`` / ``:D`` are left alone.
_SPACE_BEFORE_PUNCT = re.compile(r"(?<=\S)[ \t]+([,.!?;:%]+)(?=\s|$|[,.!?;:'\"])")
# Contractions: ``can ' t``, ``I ’ Ve``, ``it 's``, ``Let' s`` (after ftfy made ’ into ').
_CONTRACTION = re.compile(r"(?<=\w)(?: '[ ]?|' )(s|m|d|ll|re|ve|t)\b", re.IGNORECASE)
_NOT = re.compile(r"(?<=\w) n't\b", re.IGNORECASE)  # ``do n't`` -> ``don't``
_O_CLOCK = re.compile(r"\b([oO]) ?' ?clock\b")
_MA_AM = re.compile(r"\b([mM]a) ?' ?am\b")
_PLURAL_POSSESSIVE = re.compile(r"(?<=[a-z]s) ' (?=[a-z])")  # ``parents ' house``
_TIME = re.compile(r"\b(\d{1,2}) ?: ?(\d{2})\b")  # ``8: 00`` -> ``8:00``
_CURRENCY = re.compile(r"([$£€¥])[ \t]+(?=\d)")  # ``$ 500`` -> ``$500``
_BRACKETS = re.compile(r"([(\[])[ \t]*([^()\[\]\n]*?)[ \t]*([)\]])")  # ``( CPC )``
_DOUBLE_QUOTES = re.compile(r'"[ \t]*([^"\n]*?)[ \t]*"')  # ``" Happy Birthday "``
# ``named ' New College ', without``: a quote pair with spaces inside, after the contractions and
# possessives have taken their apostrophes (an apostrophe inside a word may stay in the phrase).
_SINGLE_QUOTES = re.compile(r"(?<![^\s(])' ((?:[^'\n]|(?<=\w)'(?=\w)){1,80}?) '(?=[\s,.!?;:]|$)")
# A sentence glued to the next one: ``right.But``. Needs two lower-case letters before the dot,
# so ``U.S.``, ``L.A.`` and ``a.m.`` do not match; URLs are protected already.
_GLUED_SENTENCE = re.compile(r"(?<=[a-z]{2})\.(?=[A-Z][a-z])")
_CJK_PUNCT = str.maketrans({"。": ".", "、": ","})
_HORIZONTAL_SPACE = re.compile(r"[ \t\u00a0]+")


def clean_text(text: str) -> str:
    """Repair encoding damage and tokenised spacing; strip and collapse spaces (keeps newlines)."""
    text = ftfy.fix_text(text).translate(_CJK_PUNCT)
    protected: list[str] = []

    def _protect(match: re.Match[str]) -> str:
        protected.append(match.group(0))
        return f"\x00{len(protected) - 1}\x00"

    text = _PROTECTED.sub(_protect, text)
    text = _HORIZONTAL_SPACE.sub(" ", text)
    text = _CONTRACTION.sub(lambda m: "'" + m.group(1).lower(), text)
    text = _NOT.sub("n't", text)
    text = _O_CLOCK.sub(r"\1'clock", text)
    text = _MA_AM.sub(r"\1'am", text)
    text = _PLURAL_POSSESSIVE.sub("' ", text)
    text = _TIME.sub(r"\1:\2", text)
    text = _CURRENCY.sub(r"\1", text)
    text = _BRACKETS.sub(r"\1\2\3", text)
    text = _DOUBLE_QUOTES.sub(r'"\1"', text)
    text = _SINGLE_QUOTES.sub(r"'\1'", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _GLUED_SENTENCE.sub(". ", text)
    text = _PLACEHOLDER.sub(lambda m: protected[int(m.group(1))], text)
    return "\n".join(line.strip() for line in text.split("\n")).strip()
