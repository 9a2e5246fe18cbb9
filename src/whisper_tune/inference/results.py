"""What every back-end returns, and what is done with it: :class:`Segment` and
:class:`Transcript` (one result type for every engine, as faster-whisper's), the input side
(files, folders and globs expanded, unique output names, a file read or the reason it cannot
be) and the output side: one small writer class per format behind :func:`get_writer`, as in
openai/whisper.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..audio import AudioError, load_audio

AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".mp4", ".mkv", ".wma")


@dataclass(frozen=True)
class Word:
    """One word of a segment, timed by cross-attention alignment (``words.py``) or by
    faster-whisper's; ``word`` without its leading space."""

    start: float  # seconds, in the file
    end: float
    word: str
    probability: float | None = None  # the mean probability of its tokens


@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float
    text: str
    # the scores of the 30 s window the segment came from, where the decoder measured them
    temperature: float | None = None
    avg_logprob: float | None = None
    compression_ratio: float | None = None
    no_speech_prob: float | None = None
    words: tuple[Word, ...] | None = None  # where word time stamps were asked for


@dataclass
class Transcript:
    path: str
    language: str | None
    duration: float
    segments: list[Segment] = field(default_factory=list)
    seconds: float = 0.0  # processing time

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments if s.text).strip()


def expand_inputs(items: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders (searched recursively for audio) and glob patterns -> (files, errors).

    A file reached twice (a folder and a glob, or two spellings of one path) is listed once,
    where it first appears: transcribing it twice only costs time and writes it twice."""
    files, errors = [], []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
            files += found
            if not found:
                errors.append((item, f"no audio files ({', '.join(AUDIO_SUFFIXES[:4])}, ...) in this folder"))
        elif path.exists():
            files.append(path)
        elif any(ch in item for ch in "*?["):
            matched = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            files += matched
            if not matched:
                errors.append((item, "the pattern matches no file"))
        else:
            errors.append((item, "no such file or folder"))
    unique = {}
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values()), errors


def output_names(files: list[Path]) -> dict[Path, str]:
    """An output name (no extension) per input, unique even where inputs share a stem
    (``a/x.wav``, ``b/x.wav``, ``c/x.mp3``), which would otherwise overwrite each other's
    outputs in one ``--out`` folder. A stem used once stays the name; stems used more than
    once take the folders that tell them apart (``a-x``, ``b-x``, ``c-x``), and the suffix
    too when they are in one folder (``x.wav``, ``x.mp3``). Names are compared ignoring case,
    as macOS and Windows file systems do."""
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(f.stem.casefold(), []).append(f)
    names = {}
    for group in groups.values():
        names.update({group[0]: group[0].stem} if len(group) == 1 else _told_apart(group))
    taken, unique = set(), {}
    for f in files:  # a rare clash left (a file named "a-x" besides a/x and b/x): number it
        name, n = names[f], 1
        while name.casefold() in taken:
            n += 1
            name = f"{names[f]}-{n}"
        taken.add(name.casefold())
        unique[f] = name
    return unique


def _told_apart(group: list[Path]) -> dict[Path, str]:
    """Names for files sharing a stem: their paths below the folder they all share."""
    resolved = [f.resolve() for f in group]
    common = Path(os.path.commonpath(resolved))
    relative = [r.relative_to(common) for r in resolved]
    if len({str(r.with_suffix("")).casefold() for r in relative}) == len(relative):
        relative = [r.with_suffix("") for r in relative]
    return {f: "-".join(r.parts) for f, r in zip(group, relative)}


def read_or_reason(path: Path) -> np.ndarray | str:
    """A file's 16 kHz audio, or the one-line reason it cannot be transcribed (both engines
    report such a file as ``(path, reason)`` and go on)."""
    try:
        audio = load_audio(path)
    except AudioError as e:
        return e.detail
    return "no audio samples" if audio.size == 0 else audio


# ---- writers -------------------------------------------------------------------------


def _clock(seconds: float, decimal: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


class Writer:
    extension = ""

    def format(self, transcript: Transcript) -> str:
        raise NotImplementedError

    def write(self, transcript: Transcript, out_dir: Path, name: str | None = None) -> Path:
        """Write ``out_dir/NAME.EXT``; ``name`` (from :func:`output_names`) defaults to the input's stem."""
        out = Path(out_dir) / f"{name or Path(transcript.path).stem}.{self.extension}"
        out.write_text(self.format(transcript), encoding="utf-8")
        return out


class WriteTXT(Writer):
    extension = "txt"

    def format(self, t: Transcript) -> str:
        return t.text + "\n"


class WriteSRT(Writer):
    extension = "srt"

    def format(self, t: Transcript) -> str:
        """A cue per segment; with word time stamps, a cue per word (SRT has no timing inside a
        cue; whisper.cpp's ``--max-len 1`` writes word cues the same way)."""
        cues = [(w.start, w.end, w.word) for s in t.segments for w in s.words] if _has_words(t) else None
        cues = cues if cues is not None else [(s.start, s.end, s.text) for s in t.segments]
        blocks = [
            f"{i}\n{_clock(start, ',')} --> {_clock(end, ',')}\n{text}\n"
            for i, (start, end, text) in enumerate(cues, start=1)
        ]
        return "\n".join(blocks)


class WriteVTT(Writer):
    extension = "vtt"

    def format(self, t: Transcript) -> str:
        """A cue per segment; with word time stamps, each word after its WebVTT cue timestamp
        (``<00:00:01.240><c>word</c>``), the karaoke form players highlight word by word."""
        words = _has_words(t)
        return "WEBVTT\n\n" + "\n".join(
            f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{_timed_words(s) if words else s.text}\n"
            for s in t.segments
        )


def _has_words(t: Transcript) -> bool:
    return any(s.words is not None for s in t.segments)


def _timed_words(s: Segment) -> str:
    return " ".join(f"<{_clock(w.start, '.')}><c>{w.word}</c>" for w in s.words or ()) or s.text


class WriteJSON(Writer):
    extension = "json"

    def format(self, t: Transcript) -> str:
        return (
            json.dumps(
                {
                    "path": t.path,
                    "language": t.language,
                    "duration": t.duration,
                    "text": t.text,
                    "segments": [_segment_fields(s) for s in t.segments],
                },
                ensure_ascii=False,
                indent=2,
            )
            + "\n"
        )


def _segment_fields(segment: Segment) -> dict:
    """A segment's fields, without the scores its decoder did not measure."""
    return {k: v for k, v in asdict(segment).items() if v is not None}


WRITERS = {w.extension: w for w in (WriteTXT, WriteSRT, WriteVTT, WriteJSON)}


def get_writer(fmt: str) -> Writer:
    return WRITERS[fmt]()
