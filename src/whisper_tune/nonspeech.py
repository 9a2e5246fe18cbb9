"""Non-speech clips, generated: what a fine-tuned Whisper should answer with nothing.

The most common public complaint about fine-tuned Whisper is text on audio that holds no
speech: "thank you", subtitle credits or a sentence of the training language written over
silence, room noise or music. A fine-tune on clean read speech (every training clip holds
words) makes this worse, and a WER on speech never shows it. So the report card plays
the model clips of the kinds that trigger it: digital silence, room tone (low noise with
mains hum), white/pink/brown noise at several levels, pure and swept tones, and
music-like signals (chords and arpeggios of harmonic tones with envelopes, a drum-like
pulse, and all three together).

Everything is drawn from a seeded generator, so a seed gives the same bytes on every run
and nothing ships as audio files. :func:`noise_folder_clips` cuts a user's own recordings
of noise into pieces of the same lengths, so training can later mix them in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, AudioError, load_audio
from .errors import UserError

log = logging.getLogger(__name__)

MIN_SECONDS, MAX_SECONDS = 5.0, 30.0  # clip lengths: short pauses up to one whole Whisper window
NOISE_LEVELS_DB = (-60.0, -45.0, -30.0, -20.0)  # RMS dBFS: barely there to loud
ROOM_TONE_DB = (-60.0, -45.0)  # RMS dBFS of a quiet room
HUM_HZ = (50.0, 60.0)  # mains frequency, Europe/Asia and the Americas
TONE_DB = (-30.0, -12.0)  # RMS dBFS of tones and music
TONE_HZ = (80.0, 4000.0)  # pure and swept tones stay inside speech's band
FADE_SECONDS = 0.01  # 10 ms fades: no click at a tone's start and end
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".webm", ".aac")


@dataclass(frozen=True)
class NonSpeechClip:
    """One clip with no speech in it; ``source`` names the file a user's clip was cut from."""

    kind: str
    seconds: float
    audio: np.ndarray  # mono float32 at 16 kHz, in [-1, 1]
    source: str = ""


def _at_level(x: np.ndarray, db: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x))))
    return x * (10 ** (db / 20) / rms) if rms > 0 else x


def _colored_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise whose power falls as 1/f**exponent: 0 white, 1 pink, 2 brown (red)."""
    spectrum = rng.normal(size=n // 2 + 1) + 1j * rng.normal(size=n // 2 + 1)
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    freqs[0] = freqs[1]  # no division by zero at DC; DC itself is removed below
    spectrum *= freqs ** (-exponent / 2)
    spectrum[0] = 0
    return np.fft.irfft(spectrum, n)


def _fade(x: np.ndarray) -> np.ndarray:
    k = min(int(FADE_SECONDS * SAMPLE_RATE), x.size // 2)
    ramp = np.linspace(0.0, 1.0, k)
    x[:k] *= ramp
    x[x.size - k :] *= ramp[::-1]
    return x


def _harmonic_note(freq: float, n: int, decay_s: float) -> np.ndarray:
    """A plucked/struck note: six harmonics at 1/h, a 10 ms attack and an exponential decay."""
    t = np.arange(n) / SAMPLE_RATE
    tone = sum(np.sin(2 * np.pi * h * freq * t) / h for h in range(1, 7) if h * freq < SAMPLE_RATE / 2)
    envelope = np.minimum(t / FADE_SECONDS, 1.0) * np.exp(-t / decay_s)
    return tone * envelope


def _midi_hz(note: float) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def silence(rng: np.random.Generator, n: int) -> np.ndarray:
    """Digital zero: the cleanest case, and still where many fine-tunes write a sentence."""
    return np.zeros(n)


def room_tone(rng: np.random.Generator, n: int) -> np.ndarray:
    """A quiet room: low-passed noise plus mains hum with its odd harmonics."""
    t = np.arange(n) / SAMPLE_RATE
    hum_hz = rng.choice(HUM_HZ)
    hum = sum(np.sin(2 * np.pi * h * hum_hz * t + rng.uniform(0, 2 * np.pi)) / h for h in (1, 3, 5))
    air = _at_level(_colored_noise(rng, n, 1.5), rng.uniform(*ROOM_TONE_DB))
    return air + _at_level(hum, rng.uniform(*ROOM_TONE_DB) - 6)


def _noise(exponent: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    def make(rng: np.random.Generator, n: int) -> np.ndarray:
        return _at_level(_colored_noise(rng, n, exponent), float(rng.choice(NOISE_LEVELS_DB)))

    make.__doc__ = f"Noise with power falling as 1/f**{exponent:g}, at one of NOISE_LEVELS_DB."
    return make


def tone(rng: np.random.Generator, n: int) -> np.ndarray:
    """A steady sine (a test tone, a beep held down)."""
    freq = np.exp(rng.uniform(*np.log(TONE_HZ)))
    return _at_level(_fade(np.sin(2 * np.pi * freq * np.arange(n) / SAMPLE_RATE)), rng.uniform(*TONE_DB))


def sweep(rng: np.random.Generator, n: int) -> np.ndarray:
    """A logarithmic sine sweep across the speech band, up or down."""
    f0, f1 = rng.permutation(TONE_HZ)
    seconds = n / SAMPLE_RATE
    t = np.arange(n) / SAMPLE_RATE
    k = np.log(f1 / f0)
    phase = 2 * np.pi * f0 * seconds / k * (np.exp(t / seconds * k) - 1)
    return _at_level(_fade(np.sin(phase)), rng.uniform(*TONE_DB))


def _place(out: np.ndarray, note: np.ndarray, at: int) -> None:
    end = min(out.size, at + note.size)
    if end > at:
        out[at:end] += note[: end - at]


def chords(rng: np.random.Generator, n: int) -> np.ndarray:
    """Major and minor triads of harmonic tones, one every 0.5-2 s."""
    out, at = np.zeros(n), 0
    while at < n:
        length = int(rng.uniform(0.5, 2.0) * SAMPLE_RATE)
        root, third = rng.integers(48, 67), rng.choice((3, 4))
        for step in (0, third, 7):
            _place(out, _harmonic_note(_midi_hz(root + step), length, decay_s=length / SAMPLE_RATE / 2), at)
        at += length
    return _at_level(_fade(out), rng.uniform(*TONE_DB))


def arpeggio(rng: np.random.Generator, n: int) -> np.ndarray:
    """Notes of a chord one after another, 0.12-0.4 s each: a melody line without words."""
    out = np.zeros(n)
    step_len = int(rng.uniform(0.12, 0.4) * SAMPLE_RATE)
    root, third = rng.integers(55, 72), rng.choice((3, 4))
    pattern = np.array([0, third, 7, 12, 7, third])
    for i in range(0, n, step_len):
        _place(out, _harmonic_note(_midi_hz(root + pattern[i // step_len % 6]), 3 * step_len, 0.25), i)
    return _at_level(_fade(out), rng.uniform(*TONE_DB))


def drums(rng: np.random.Generator, n: int) -> np.ndarray:
    """A drum-like pulse at 70-160 BPM: a falling-pitch kick on the beat, a noise hat between."""
    beat = int(60 / rng.uniform(70, 160) * SAMPLE_RATE)
    t = np.arange(int(0.25 * SAMPLE_RATE)) / SAMPLE_RATE
    kick = np.sin(2 * np.pi * (50 * t + 100 * 0.04 * (1 - np.exp(-t / 0.04)))) * np.exp(-t / 0.08)
    hat = rng.normal(size=int(0.05 * SAMPLE_RATE)) * np.exp(-np.arange(int(0.05 * SAMPLE_RATE)) / 200) * 0.3
    out = np.zeros(n)
    for at in range(0, n, beat):
        _place(out, kick, at)
        _place(out, hat, at + beat // 2)
    return _at_level(_fade(out), rng.uniform(*TONE_DB))


def band(rng: np.random.Generator, n: int) -> np.ndarray:
    """Chords, an arpeggio and drums together: the nearest this gets to a song."""
    return _at_level(chords(rng, n) + 0.7 * arpeggio(rng, n) + 0.8 * drums(rng, n), rng.uniform(*TONE_DB))


GENERATORS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "silence": silence,
    "room_tone": room_tone,
    "white_noise": _noise(0.0),
    "pink_noise": _noise(1.0),
    "brown_noise": _noise(2.0),
    "tone": tone,
    "sweep": sweep,
    "chords": chords,
    "arpeggio": arpeggio,
    "drums": drums,
    "band": band,
}
KINDS = tuple(GENERATORS)


def nonspeech_clip(kind: str, seconds: float, seed: int) -> NonSpeechClip:
    """One clip of ``kind`` (a key of :data:`GENERATORS`), ``seconds`` long."""
    if kind not in GENERATORS:
        raise UserError(f"unknown non-speech kind {kind!r}: use one of {', '.join(KINDS)}")
    n = round(seconds * SAMPLE_RATE)
    audio = np.clip(GENERATORS[kind](np.random.default_rng(seed), n), -1.0, 1.0).astype(np.float32)
    return NonSpeechClip(kind, n / SAMPLE_RATE, audio)


def nonspeech_clips(n: int, seed: int = 0) -> list[NonSpeechClip]:
    """``n`` clips of 5-30 s; the kinds go round a seeded order of :data:`KINDS`, so every
    kind is present once ``n >= len(KINDS)``. Each clip has its own seed drawn from ``seed``,
    so the same seed gives the same bytes."""
    rng = np.random.default_rng(seed)
    order = [KINDS[i] for i in rng.permutation(len(KINDS))]
    seeds = rng.integers(0, 2**63 - 1, size=n)
    lengths = rng.uniform(MIN_SECONDS, MAX_SECONDS, size=n)
    return [nonspeech_clip(order[i % len(order)], lengths[i], int(seeds[i])) for i in range(n)]


def _pieces(samples: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Consecutive pieces of 5-30 s (the last takes what is left); a tail under 5 s is left out."""
    pieces, at = [], 0
    while samples.size - at >= MIN_SECONDS * SAMPLE_RATE:
        length = round(rng.uniform(MIN_SECONDS, MAX_SECONDS) * SAMPLE_RATE)
        pieces.append(samples[at : at + length])
        at += length
    return pieces


def _audio_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"noise folder {folder} does not exist or is not a folder: give a folder of audio files")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise UserError(f"no audio files in {folder}: put noise recordings there ({', '.join(AUDIO_SUFFIXES)})")
    return files


def noise_folder_clips(folder: str | Path, seed: int = 0) -> list[NonSpeechClip]:
    """A user's noise recordings (every audio file under ``folder``) cut into 5-30 s clips
    of kind ``"user"``: their own room, street or music, which no generator imitates.
    A file that cannot be decoded is a UserError naming it; one shorter than 5 s is logged."""
    rng = np.random.default_rng(seed)
    clips = []
    for path in _audio_files(Path(folder)):
        try:
            samples = load_audio(path)
        except AudioError as e:
            raise UserError(f"noise file {path} cannot be used ({e}): convert or remove it") from None
        pieces = _pieces(samples, rng)
        if not pieces:
            log.warning("noise file %s is shorter than %g s: left out", path, MIN_SECONDS)
        for piece in pieces:
            audio = np.clip(piece, -1.0, 1.0).astype(np.float32)
            clips.append(NonSpeechClip("user", audio.size / SAMPLE_RATE, audio, str(path)))
    if not clips:
        raise UserError(f"every audio file in {folder} is shorter than {MIN_SECONDS:g} s: record longer noise")
    return clips
