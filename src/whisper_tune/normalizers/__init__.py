"""Text normalizers for error rates: a WER is only as good as its normalizer.

Whisper's ``BasicTextNormalizer`` decomposes text (NFKD) and drops every combining mark,
which deletes the vowel signs (matras) and viramas of Devanagari and other Indic
scripts: "माझी" and "मझ" become the same word, so the "normalized WER" the reference
recipe published for Marathi is not a trustworthy number. :func:`normalize` keeps every
mark and only removes what no script spells with: punctuation, symbols and invisible
format characters; it case-folds scripts that have case.
"""

from __future__ import annotations

from .script_aware import normalize, orthographic

__all__ = ["normalize", "orthographic"]
