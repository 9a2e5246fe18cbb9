"""Voice activity detection before decoding: Silero VAD finds the speech, only the speech is
decoded, and every time stamp is put back on the original file's timeline.

Why it is built this way:

* The detector is faster-whisper's: its Silero VAD v6 ONNX model (``faster_whisper/assets``,
  run by onnxruntime on the CPU, a few ms per minute of audio) and its
  ``get_speech_timestamps``. Nothing is re-implemented, and the parameters keep
  faster-whisper's names (``vad_filter``, ``vad_parameters``: ``threshold``,
  ``min_speech_duration_ms``, ``max_speech_duration_s``, ``min_silence_duration_ms``,
  ``speech_pad_ms``) and defaults, so its documentation applies.
* As faster-whisper's ``vad_filter`` does, the speech spans are joined into one shorter clip
  and that clip is decoded; :class:`SpeechMap` maps a time of the joined clip back to the file
  exactly, in samples. The join is done here, above the back-ends, for every engine (the
  transformers engines and faster-whisper alike, whose own ``vad_filter`` stays off), so the
  same file gives the same spans whichever engine decodes it.
* Whisper writes text into silence and noise (the report card's non-speech set measures it);
  a file with long pauses also costs windows of nothing. Both are what VAD removes. A file
  where the detector finds no speech at all is not decoded: its transcript is empty.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from ..audio import SAMPLE_RATE
from ..errors import UserError
from .results import Segment, Word

API_VAD_SECONDS = 30.0  # the API filters files longer than one window by default


@dataclass(frozen=True)
class VadOptions:
    """faster-whisper's ``vad_parameters`` (names and defaults), plus ``longer_than_s``: the
    filter applies to files longer than this (0: every file; the API's default is 30 s, so a
    short clip is decoded as sent)."""

    threshold: float = 0.5  # speech probability above which a 32 ms frame is speech
    min_speech_duration_ms: int = 0  # shorter speech is dropped
    max_speech_duration_s: float = math.inf  # longer speech is split at its longest silence
    min_silence_duration_ms: int = 2000  # a pause this long ends a speech span
    speech_pad_ms: int = 400  # added each side of a span
    longer_than_s: float = 0.0

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise UserError(f"vad threshold must be a probability between 0 and 1, not {self.threshold}")
        for name in ("min_speech_duration_ms", "min_silence_duration_ms", "speech_pad_ms", "longer_than_s"):
            if not getattr(self, name) >= 0:
                raise UserError(f"vad {name} must be 0 or more, not {getattr(self, name)}")
        if not self.max_speech_duration_s > 0:
            raise UserError(f"vad max_speech_duration_s must be above 0, not {self.max_speech_duration_s}")

    @classmethod
    def parse(cls, text: str | None, **defaults) -> VadOptions:
        """Options from ``KEY=VALUE[,KEY=VALUE...]`` or a JSON object (``--vad-parameters``)."""
        given: dict = {}
        if text and text.strip().startswith("{"):
            try:
                given = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"--vad-parameters is not valid JSON ({e.msg}): {text}") from None
        elif text:
            for part in filter(None, (p.strip() for p in text.split(","))):
                key, sep, value = part.partition("=")
                if not sep:
                    raise UserError(f"--vad-parameters: '{part}' is not KEY=VALUE (e.g. threshold=0.4)")
                given[key.strip()] = value.strip()
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise UserError(f"unknown vad parameter {unknown[0]!r}: use {', '.join(known)}")
        try:
            typed = {k: (int if known[k] == "int" else float)(v) for k, v in given.items()}
        except (TypeError, ValueError):
            raise UserError(f"--vad-parameters takes numbers: {text}") from None
        return cls(**(defaults | typed))

    def applies(self, audio: np.ndarray) -> bool:
        return len(audio) > self.longer_than_s * SAMPLE_RATE

    def describe(self) -> dict:
        return {k: (None if v == math.inf else v) for k, v in asdict(self).items()}


def speech_spans(audio: np.ndarray, options: VadOptions) -> list[tuple[int, int]]:
    """(start, end) sample spans of speech in 16 kHz ``audio``, in order, not overlapping."""
    try:
        from faster_whisper.vad import VadOptions as FasterVadOptions
        from faster_whisper.vad import get_speech_timestamps
    except ImportError:
        raise UserError("VAD runs faster-whisper's Silero model: pip install faster-whisper onnxruntime") from None
    params = {k: v for k, v in asdict(options).items() if k != "longer_than_s"}
    found = get_speech_timestamps(audio.astype(np.float32, copy=False), FasterVadOptions(**params), SAMPLE_RATE)
    return [(int(s["start"]), int(s["end"])) for s in found if s["end"] > s["start"]]


class SpeechMap:
    """The speech spans of a file joined end to end (what is decoded), and the way back: a time
    in the joined clip is a time in the file. Exact in samples: the joined clip's sample ``x``
    of span ``k`` is the file's sample ``spans[k].start + x - joined_start[k]``."""

    def __init__(self, spans: list[tuple[int, int]]):
        self.spans = spans
        lengths = np.array([e - s for s, e in spans], dtype=np.int64)
        self.joined_end = np.cumsum(lengths)  # where span k ends in the joined clip
        self.joined_start = self.joined_end - lengths

    def cut(self, audio: np.ndarray) -> np.ndarray:
        return np.concatenate([audio[s:e] for s, e in self.spans]) if self.spans else audio[:0]

    def to_file(self, seconds: float, is_end: bool = False) -> float:
        """The file's time (s) of the joined clip's time ``seconds``. A time on the border of two
        spans is the end of the first when ``is_end`` (a segment's end), else the start of the
        second, so a segment never stretches over the silence removed after it."""
        if not self.spans:
            return seconds
        x = int(round(seconds * SAMPLE_RATE))
        side = "left" if is_end else "right"
        k = min(int(np.searchsorted(self.joined_end, x, side=side)), len(self.spans) - 1)
        sample = self.spans[k][0] + min(x, int(self.joined_end[k])) - int(self.joined_start[k])
        return sample / SAMPLE_RATE

    def segment(self, segment: Segment) -> Segment:
        """``segment`` (and its words) on the file's timeline."""
        start = round(self.to_file(segment.start), 3)
        end = max(start, round(self.to_file(segment.end, is_end=True), 3))
        words = segment.words
        if words is not None:
            words = tuple(self.word(w, start, end) for w in words)
        return replace(segment, start=start, end=end, words=words)

    def word(self, word: Word, low: float, high: float) -> Word:
        start = min(max(round(self.to_file(word.start), 3), low), high)
        end = min(max(round(self.to_file(word.end, is_end=True), 3), start), high)
        return replace(word, start=start, end=end)
