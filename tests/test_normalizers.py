import unicodedata

import pytest

from whisper_tune.normalizers import normalize, orthographic

MARATHI = ["माझी आई छान स्वयंपाक करते.", "शिवाजी महाराजांनी अनेक किल्ले बांधले।", "क़िला, ज़मीन आणि फ़ोन"]


def _marks(text: str) -> list[str]:
    return [ch for ch in unicodedata.normalize("NFC", text) if unicodedata.category(ch).startswith("M")]


@pytest.mark.parametrize("text", MARATHI)
def test_devanagari_marks_survive(text):
    out = normalize(text)
    assert _marks(out) == _marks(text)  # every matra, virama, anusvara and nukta is kept, in order
    assert "." not in out and "।" not in out and "," not in out


def test_whispers_basic_normalizer_would_destroy_them():
    """Why we do not use it: Whisper's basic normalizer strips vowel signs from Marathi."""
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    assert BasicTextNormalizer()("माझी आई") != "माझी आई"
    assert normalize("माझी आई") == "माझी आई"


@pytest.mark.parametrize(
    "given, expected",
    [
        ("Hello, World!", "hello world"),
        ("ÉCOLE   du  Soir", "école du soir"),
        ("ＡＢＣ１２３", "abc123"),  # full-width forms (NFKC)
        ("आज\u200dहवा", "आजहवा"),  # zero-width joiner removed, nothing else
        ("“quoted” — dash…", "quoted dash"),
        ("।॥", ""),
    ],
)
def test_punctuation_case_and_format_characters(given, expected):
    assert normalize(given) == expected


def test_orthographic_keeps_punctuation_and_case():
    assert orthographic("  Hello,\n World. ") == "Hello, World."
