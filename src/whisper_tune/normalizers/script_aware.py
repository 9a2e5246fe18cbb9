"""A script-aware normalizer: keeps combining marks, drops punctuation and symbols."""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")
# Unicode categories turned into spaces: punctuation (P*: includes the Devanagari danda
# । and double danda ॥), symbols (S*) and control characters (Cc).
_DROP_AS_SPACE = ("P", "S", "Cc")
# Format characters (Cf: zero-width joiner/non-joiner, soft hyphen, bidi marks) change
# how a word renders, not which word it is.
_DROP = ("Cf",)


def orthographic(text: str) -> str:
    """The text as written, with Unicode composed (NFC) and whitespace collapsed only."""
    return _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()


def normalize(text: str) -> str:
    """Case-fold, remove punctuation/symbols/format characters, keep every letter, digit
    and combining mark (matras, viramas, nuktas, accents), collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).casefold()
    out = []
    for ch in text:
        category = unicodedata.category(ch)
        if category in _DROP:
            continue
        out.append(" " if category.startswith(_DROP_AS_SPACE) else ch)
    return _SPACES.sub(" ", "".join(out)).strip()
