"""Transcribe audio files of any length with base (+ adapter).

Two engines behind :func:`transcribe_files`: the batched one (``longform.py``: windows of
many files decoded together through the fast decoder, the default where it applies) and
the sequential one here, :func:`transcribe_audio`: Whisper's own long-form decoding
(transformers' ``generate`` with timestamps), where each 30 s window starts where the last
complete segment ended and may be prompted with its text; every segment carries its time
stamps either way.
Features come from ``features.log_mel_whole``: the same extractor and settings as training.
Output formats are one small writer class each behind :func:`get_writer`, as in
openai/whisper.
"""

from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .audio import CHUNK_SECONDS, AudioError, check_finite, duration, load_audio
from .features import log_mel_whole
from .modeling import input_dtype, quiet_generate
from .robust_decoding import DecodingOptions, decoding_session

AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".mp4", ".mkv", ".wma")


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


def detect_language(model, processor, features: torch.Tensor) -> str:
    """Whisper's language guess from the first window."""
    token = model.detect_language(input_features=features[:, :, : CHUNK_SECONDS * 100])[0]
    return processor.tokenizer.convert_ids_to_tokens(int(token)).strip("<|>")


def transcribe_audio(
    model,
    processor,
    audio: np.ndarray,
    language: str | None = None,
    task: str = "transcribe",
    max_new_tokens: int = 224,
    prompt: str | None = None,
    decoding: DecodingOptions | None = None,
) -> tuple[list[Segment], str]:
    """Segments with time stamps and window scores for one 16 kHz clip of any length, and
    the language used.

    ``prompt`` is Whisper's initial prompt (previous-text tokens before the first window:
    spellings, names, style). ``decoding`` defaults to openai/whisper's: greedy with
    temperature fallback and its thresholds (see ``robust_decoding``).
    """
    check_finite(audio)  # NaN features decode as "!!!!": refuse, as for an unreadable file
    decoding = decoding or DecodingOptions()
    device = next(model.parameters()).device
    if decoding.condition_on_previous_text:  # room for up to 224 previous tokens + 4 start tokens
        max_new_tokens = min(max_new_tokens, model.config.max_target_positions // 2 - 5)
    options = decoding.generate_kwargs()
    if prompt and prompt.strip():
        options["prompt_ids"] = _prompt_ids(model, processor, prompt, max_new_tokens).to(device)
    features, mask = log_mel_whole(processor.feature_extractor, audio, device)
    features = features.to(dtype=input_dtype(model))
    session = decoding_session(model, processor.tokenizer, device)
    with torch.inference_mode(), quiet_generate(), session as scores:
        if language is None:
            language = detect_language(model, processor, features)
        out = model.generate(
            input_features=features,
            attention_mask=mask,
            language=language,
            task=task,
            return_timestamps=True,
            return_segments=True,
            max_new_tokens=max_new_tokens,
            **options,
        )
    return _segments(out, processor.tokenizer, scores, duration(audio)), language


def _segments(out, tokenizer, scores: dict, total: float) -> list[Segment]:
    """``generate``'s segments as Segments clipped to the clip's length, each with its
    window's scores; else one segment for the whole clip (empty where every window was silent)."""
    segments = []
    for seg in out["segments"][0] if isinstance(out, dict) and out.get("segments") else []:
        text = tokenizer.decode(seg["tokens"], skip_special_tokens=True).strip()
        start = min(float(seg["start"]), total)
        end = max(start, min(float(seg["end"]), total))
        window = scores.get(id(seg.get("result")))
        segments.append(Segment(round(start, 3), round(end, 3), text, **_score_fields(window)))
    if not segments:  # no window kept (silence) or no time stamp predicted
        ids = out["sequences"] if isinstance(out, dict) else out
        text = tokenizer.batch_decode(ids, skip_special_tokens=True)[0].strip()
        segments = [Segment(0.0, round(total, 3), text)]
    return segments


def _score_fields(window) -> dict:
    if window is None:
        return {}
    return {
        "temperature": window.temperature,
        "avg_logprob": None if window.avg_logprob is None else round(window.avg_logprob, 4),
        "compression_ratio": round(window.compression_ratio, 4),
        "no_speech_prob": None if window.no_speech_prob is None else round(window.no_speech_prob, 4),
    }


def _prompt_ids(model, processor, prompt: str, max_new_tokens: int) -> torch.Tensor:
    """``<|startofprev|>`` + the prompt's last tokens: as openai/whisper, at most half the
    decoder's context, and short enough that prompt, start tokens and ``max_new_tokens`` fit."""
    ids = processor.get_prompt_ids(prompt, return_tensors="pt")
    context = model.config.max_target_positions
    keep = max(0, min(context // 2 - 1, context - max_new_tokens - 5))  # 5: start, language, task, time, end
    return torch.cat([ids[:1], ids[1:][-keep:] if keep else ids[1:][:0]])


ENGINES = ("auto", "batched", "sequential")


def transcribe_files(
    model,
    processor,
    files: list[Path],
    language: str | None = None,
    task: str = "transcribe",
    progress: bool = True,
    decoding: DecodingOptions | None = None,
    batch_size: int = 16,
    engine: str = "auto",
):
    """Yield a Transcript, or (path, error) for a file that cannot be read, per file.

    ``engine``: ``batched`` is ``longform.transcribe_files_batched`` (windows of many files
    decoded ``batch_size`` at a time through the fast decoder), ``sequential`` is
    :func:`transcribe_audio` per file (transformers' ``generate``, window after window);
    ``auto`` takes the batched one where it applies (a plain or merged model, greedy from
    temperature 0; see ``longform.supports``)."""
    from .longform import supports, transcribe_files_batched

    decoding = decoding or DecodingOptions()
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    if engine == "batched" or (engine == "auto" and supports(model, decoding)):
        return transcribe_files_batched(model, processor, files, language, task, batch_size, decoding, progress)
    return _each_file(
        files, lambda audio: transcribe_audio(model, processor, audio, language, task, decoding=decoding), progress
    )


def is_ct2_model(path: str | Path) -> bool:
    """A CTranslate2 model folder, as ``export-ct2`` writes it."""
    return (Path(path) / "model.bin").is_file()


def transcribe_files_ct2(
    model_dir: str | Path,
    files: list[Path],
    language: str | None = None,
    task: str = "transcribe",
    compute_type: str = "default",
    progress: bool = True,
    decoding: DecodingOptions | None = None,
):
    """``transcribe_files`` on a CTranslate2 export, through faster-whisper: same audio
    decoding, same Transcript and writers, same decoding options, with time stamps. On a CPU
    this is the fastest engine for a finished model (see benchmarks/results/cpu_transcribe.md)."""
    model = load_ct2(model_dir, compute_type)
    return _each_file(
        files, lambda audio: transcribe_audio_ct2(model, audio, language, task, decoding=decoding), progress
    )


def load_ct2(model_dir: str | Path, compute_type: str = "default"):
    """A faster-whisper model for a CTranslate2 folder, or UserError saying what to install."""
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        from .errors import UserError

        raise UserError(
            f"{model_dir} is a CTranslate2 model: transcribing it needs faster-whisper "
            f"(pip install 'whisper-tune[export]'), or pass the transformers model folder instead"
        ) from None
    return WhisperModel(str(model_dir), device="auto", compute_type=compute_type)


def transcribe_audio_ct2(
    model,
    audio: np.ndarray,
    language: str | None = None,
    task: str = "transcribe",
    prompt: str | None = None,
    decoding: DecodingOptions | None = None,
) -> tuple[list[Segment], str]:
    """``transcribe_audio`` for a faster-whisper model (``load_ct2``): one 16 kHz clip ->
    (segments with their window scores, language), with the same ``decoding`` options
    (faster-whisper implements openai/whisper's fallback under the same names)."""
    check_finite(audio)
    segments, info = model.transcribe(
        audio,
        language=language,
        task=task,
        initial_prompt=prompt or None,
        **(decoding or DecodingOptions()).faster_whisper_kwargs(),
    )
    return [_ct2_segment(s) for s in segments], info.language


def _ct2_segment(s) -> Segment:
    return Segment(
        round(s.start, 3),
        round(s.end, 3),
        s.text.strip(),
        temperature=s.temperature,
        avg_logprob=round(s.avg_logprob, 4),
        compression_ratio=round(s.compression_ratio, 4),
        no_speech_prob=round(s.no_speech_prob, 4),
    )


def read_or_reason(path: Path) -> np.ndarray | str:
    """A file's 16 kHz audio, or the one-line reason it cannot be transcribed (both engines
    report such a file as ``(path, reason)`` and go on)."""
    try:
        audio = load_audio(path)
    except AudioError as e:
        return e.detail
    return "no audio samples" if audio.size == 0 else audio


def _each_file(files: list[Path], decode, progress: bool):
    from tqdm.auto import tqdm

    for path in tqdm(files, desc="transcribe", unit="file", disable=not progress or len(files) < 2):
        audio = read_or_reason(path)
        if isinstance(audio, str):
            yield str(path), audio
            continue
        yield timed_transcript(path, audio, decode)


def timed_transcript(path: Path, audio: np.ndarray, decode) -> Transcript:
    """``decode(audio)`` (segments, language) as the file's Transcript, with the seconds it took."""
    start = time.perf_counter()
    segments, used = decode(audio)
    return Transcript(str(path), used, duration(audio), segments, time.perf_counter() - start)


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
        blocks = [
            f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n"
            for i, s in enumerate(t.segments, start=1)
        ]
        return "\n".join(blocks)


class WriteVTT(Writer):
    extension = "vtt"

    def format(self, t: Transcript) -> str:
        return "WEBVTT\n\n" + "\n".join(
            f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n" for s in t.segments
        )


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
