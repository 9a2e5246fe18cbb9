import shutil
from collections import Counter

import numpy as np
import pytest

from whisper_tune import card_sets
from whisper_tune.audio import SAMPLE_RATE, SILENCE_DB, rms_db
from whisper_tune.card_sets import card_sentences, language_id_sentences, spoken_set, standard_sets
from whisper_tune.processor import languages

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (scripts/setup.sh)"
)


def test_english_sentences_are_ours_and_unique():
    sentences = card_sentences("en")
    assert len(sentences) >= 40 and len(set(sentences)) == len(sentences)
    assert all(s.isascii() and not any(ch.isdigit() for ch in s) for s in sentences)
    assert not any(s.startswith("#") for s in sentences)


def test_language_id_sentences_are_whisper_languages_other_than_english():
    pairs = language_id_sentences()
    per_language = Counter(lang for lang, _ in pairs)
    assert len(per_language) >= 4 and min(per_language.values()) >= 3
    assert set(per_language) <= set(languages()) and "en" not in per_language
    assert all(sentence and "\t" not in sentence for _, sentence in pairs)
    assert all(any("\u0900" <= ch <= "\u097f" for ch in s) for lang, s in pairs if lang == "hi")  # Devanagari


@needs_espeak
def test_spoken_set_gives_sound_per_sentence_and_is_seeded(tmp_path, monkeypatch):
    sentences = card_sentences("en")[:2]
    monkeypatch.setenv("WHISPER_TUNE_CACHE", str(tmp_path / "one"))
    clips = spoken_set("en", sentences, seed=5)
    assert len(clips) == len(sentences)
    for clip in clips:
        assert clip.dtype == np.float32 and clip.ndim == 1 and clip.size > 0.5 * SAMPLE_RATE
        assert np.isfinite(clip).all() and np.abs(clip).max() <= 1.0 and rms_db(clip) > SILENCE_DB
    monkeypatch.setenv("WHISPER_TUNE_CACHE", str(tmp_path / "two"))  # spoken again, not read back
    assert [c.tobytes() for c in spoken_set("en", sentences, seed=5)] == [c.tobytes() for c in clips]
    assert [c.tobytes() for c in spoken_set("en", sentences, seed=6)] != [c.tobytes() for c in clips]


@needs_espeak
def test_a_spoken_set_is_kept_and_read_back_without_espeak(tmp_path, monkeypatch):
    """The card's speech is made once per machine; a copy of the cache serves a machine
    without espeak-ng (the GPU image) with the very same samples."""
    monkeypatch.setenv("WHISPER_TUNE_CACHE", str(tmp_path))
    sentences = card_sentences("en")[:3]
    clips = spoken_set("en", sentences, seed=1)
    assert len(list((tmp_path / "card-speech").glob("en-*.npz"))) == 1

    def no_espeak(*args):
        raise AssertionError("spoken again although it was kept")

    monkeypatch.setattr(card_sets, "speak", no_espeak)
    again = spoken_set("en", sentences, seed=1)
    assert [c.tobytes() for c in again] == [c.tobytes() for c in clips]
    with pytest.raises(AssertionError, match="spoken again"):
        spoken_set("en", sentences[:2], seed=1)  # another set is another file


@needs_espeak
def test_every_language_id_language_is_spoken():
    first = {}
    for lang, sentence in language_id_sentences():
        first.setdefault(lang, sentence)
    for lang, sentence in first.items():
        (clip,) = spoken_set(lang, [sentence])
        assert clip.size > 0.5 * SAMPLE_RATE and rms_db(clip) > SILENCE_DB, lang


def test_standard_sets_fill_every_set(monkeypatch):
    from whisper_tune.nonspeech import KINDS
    from whisper_tune.report_card import LabelledSet

    # espeak-ng is tested above: here only how the sets are put together
    monkeypatch.setattr(
        card_sets, "spoken_set", lambda lang, sentences, seed=0: [np.zeros(SAMPLE_RATE)] * len(sentences)
    )
    rng = np.random.default_rng(0)
    target = LabelledSet([rng.normal(size=25 * SAMPLE_RATE).astype(np.float32) for _ in range(6)], ["x"] * 6)
    sets = standard_sets("mr", target, nonspeech=len(KINDS), longform_seconds=60)
    assert sets.sizes() == {
        "target": 6,
        "nonspeech": len(KINDS),
        "longform": 2,  # 150 s of clips and pauses: two files of at least 60 s
        "english": len(card_sentences("en")),
        "language_id": len(language_id_sentences()),
    }
    too_short = standard_sets("mr", target, nonspeech=1, longform_seconds=1000)
    assert too_short.longform == []
