"""The report card's sets: English and language-ID clips (our own sentences spoken by
espeak-ng), and :func:`standard_sets`, which puts them together with generated non-speech
clips and long files joined from the held-out clips.

A fine-tune on one language forgets others: English gets transcribed in the target's
script, and speech in any language gets detected as the target. The card measures both on
sentences written for this project (``assets/card_sentences_en.txt`` and
``assets/card_sentences_lid.txt``, CC0), so the sets ship with the package as text and
become audio on demand; no audio is stored. espeak-ng is not a human voice, but base and
fine-tune hear the same clips: the card measures what the fine-tune changed.
Voices, speeds and pitches are drawn as the demo corpus draws them (``demo_data``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from importlib import resources
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, resample
from .demo_data import PITCH_RANGE, SPEED_RANGE, VOICES, speak
from .errors import UserError
from .nonspeech import nonspeech_clips
from .processor import cache_root
from .report_card import CardSets, LabelledSet, join_clips

log = logging.getLogger(__name__)

ESPEAK_LANGUAGE = {"en": "en-us"}  # Whisper's code -> espeak-ng's voice where they differ
NONSPEECH_CLIPS = 44  # four of each non-speech kind
LONGFORM_SECONDS = 120.0  # a long file: four Whisper windows at least


def card_sentences(name: str) -> list[str]:
    """The lines of ``assets/card_sentences_<name>.txt`` without comments and blanks."""
    path = resources.files("whisper_tune") / "assets" / f"card_sentences_{name}.txt"
    if not path.is_file():
        raise UserError(f"no card sentences {name!r}: whisper-tune ships 'en' and 'lid'")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def language_id_sentences() -> list[tuple[str, str]]:
    """(language code, sentence) pairs of the language-ID set."""
    return [tuple(line.split("\t", 1)) for line in card_sentences("lid")]


def spoken_set(lang: str, sentences: list[str], seed: int = 0) -> list[np.ndarray]:
    """Each sentence spoken by espeak-ng in ``lang`` (Whisper's code), as 16 kHz float32,
    with a seeded voice variant, speed and pitch per sentence.

    Spoken once per machine and kept in the cache (:func:`speech_cache`): the card runs at
    the end of every training run, and a machine without espeak-ng (a GPU image) can use
    sets spoken elsewhere by copying the cache folder."""
    path = speech_cache() / f"{_speech_key(lang, sentences, seed)}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return [stored[f"clip{i}"].astype(np.float32) / 32767.0 for i in range(len(sentences))]
    rng = random.Random(seed)
    voice = ESPEAK_LANGUAGE.get(lang, lang)
    out = []
    for sentence in sentences:
        settings = rng.choice(VOICES), rng.randint(*SPEED_RANGE), rng.randint(*PITCH_RANGE)
        samples, sr = speak(sentence, voice, *settings)
        out.append(np.clip(resample(samples, sr, SAMPLE_RATE), -1.0, 1.0))  # resampling may overshoot 1.0
    out = [np.round(a * 32767.0).astype(np.int16).astype(np.float32) / 32767.0 for a in out]  # as stored
    _store(path, out)
    return out


def speech_cache() -> Path:
    """Where spoken card sets are kept: ``$WHISPER_TUNE_CACHE/card-speech``."""
    return cache_root() / "card-speech"


def _speech_key(lang: str, sentences: list[str], seed: int) -> str:
    """A name that changes with anything that changes the audio but espeak-ng's own version
    (the GPU image has none to ask): delete the folder after upgrading espeak-ng."""
    what = [lang, sentences, seed, VOICES, SPEED_RANGE, PITCH_RANGE, SAMPLE_RATE, 1]
    return f"{lang}-{hashlib.sha256(json.dumps(what, ensure_ascii=False).encode()).hexdigest()[:16]}"


def _store(path: Path, clips: list[np.ndarray]) -> None:
    """Write the clips as 16-bit samples, atomically; a cache that cannot be written is
    only a slower next run."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **{f"clip{i}": np.round(a * 32767.0).astype(np.int16) for i, a in enumerate(clips)})
        tmp.replace(path)
    except OSError as error:
        log.warning("could not keep the spoken card set in %s: %s", path.parent, error.strerror)


def english_set(seed: int = 0) -> LabelledSet:
    """The card's English clips with their sentences as references."""
    sentences = card_sentences("en")
    return LabelledSet(spoken_set("en", sentences, seed), sentences)


def language_id_set(seed: int = 0) -> LabelledSet:
    """The card's language-ID clips labelled with the language each is spoken in."""
    pairs = language_id_sentences()
    audios = [spoken_set(lang, [sentence], seed + i)[0] for i, (lang, sentence) in enumerate(pairs)]
    return LabelledSet(audios, [lang for lang, _ in pairs])


def standard_sets(
    language: str,
    target: LabelledSet,
    nonspeech: int = NONSPEECH_CLIPS,
    longform_seconds: float = LONGFORM_SECONDS,
    seed: int = 0,
    longform_from: LabelledSet | None = None,
) -> CardSets:
    """Every set of the card from the held-out clips of ``language``: non-speech clips,
    long files joined from the held-out clips (``longform_from``, default ``target``), the
    English and the language-ID sets. Held-out clips too short in total for one long file
    leave the long-form lines "n/a" (0 files)."""
    joined = longform_from or target
    total = sum(a.size for a in joined.audios) / SAMPLE_RATE
    longform = (
        join_clips(joined.audios, joined.labels, longform_seconds, seed=seed) if total >= longform_seconds else []
    )
    return CardSets(
        language=language,
        target=target,
        nonspeech=[clip.audio for clip in nonspeech_clips(nonspeech, seed)],
        longform=longform,
        english=english_set(seed),
        language_id=language_id_set(seed),
    )
