"""Batched long-form transcription: the 30 s windows of many files (and of one long file)
decoded together through the fast decoder, with time stamps, then stitched back per file.

openai/whisper's long-form loop (and transformers' ``generate``, which ``generate.py``
runs) is sequential: each window starts where the last complete segment of the previous one
ended, and is prompted with its text. That costs a GPU its batch: a folder of long
recordings runs at batch size one. Here, as in transformers' chunked ``pipeline`` and
faster-whisper's ``BatchedInferencePipeline``, windows are cut up front, so they are
independent and any number of them, from any files, fill one batch of
``greedy.GreedyDecoder`` (static caches, a CUDA graph per step on a GPU, eager on the CPU,
no per-clip ``generate`` set-up):

* Cutting: a file of at most 30 s is one window. A longer one is cut near 30 s in the
  longest pause of the window's last :data:`CUT_SEARCH_SECONDS`, so a cut falls between
  sentences, not in a word; windows cover the file exactly, without overlap.
* Decoding: ``<|startoftranscript|><|lang|><|task|>`` and the time-stamp rules of
  ``generate`` (tests check the tokens equal ``generate``'s for a single window); the
  language is the one given, else detected once per file on its first window.
* Tails: where a window does not end on a single closing time stamp, Whisper left its last
  segment for the next window (openai's loop seeks to that time stamp and decodes from
  there). Independent windows have no next window, so the words after it were lost (about
  7 % of the words of the long-form benchmark). The unfinished segment is dropped and the
  audio from its time stamp to the window's end becomes a new window, decoded with the other
  tails in another batched round, as openai's seek would.
* Stitching: each window's segments are shifted by the window's start; text after the last
  time stamp (a segment cut by the last round) ends at the window's end.
* Robustness: each window's scores are openai's (text compression ratio, mean token
  log-probability, no-speech probability). A window that fails ``DecodingOptions``' thresholds
  is decoded again, alone, through ``generate.transcribe_audio`` (transformers'
  ``generate`` with the fallback temperatures after 0); a window the model calls silent
  with doubtful tokens is dropped, as openai does.

Not conditioned on previous text: windows decoded together cannot see each other's text.
``transcribe`` therefore defaults to ``condition_on_previous_text`` off (as the pipeline and
faster-whisper's batched pipeline do; conditioning is also what lets one bad window's loop
run on into the next); with it on, files longer than one window go through the sequential
path, while single-window files, where it changes nothing, stay batched.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..audio import N_SAMPLES, SAMPLE_RATE, check_finite
from ..features import log_mel
from ..modeling import input_dtype
from ..processor import TIME_PRECISION
from .generate import detect_language, transcribe_audio
from .greedy import decoder_for, prompt_ids, supports_fast_path
from .options import MAX_NEW_TOKENS, DecodingOptions, compression_ratio
from .results import Segment

log = logging.getLogger(__name__)

CUT_SEARCH_SECONDS = 8.0  # a long file is cut in the longest pause of each window's last 8 s
QUIET_FRAME = SAMPLE_RATE // 50  # 320 samples: energy of 20 ms frames...
QUIET_HOP = SAMPLE_RATE // 100  # 160 samples: ...every 10 ms
PAUSE_DB = 10.0  # a frame within 10 dB of the quietest 5 % of frames is part of a pause
MAX_INITIAL_TIMESTAMP = 50  # openai's max_initial_timestamp, 1.0 s, where the model's config sets none
MIN_TAIL_SECONDS = 1.0  # a window's unfinished tail shorter than this is not decoded again
MAX_ROUNDS = 4  # rounds of tails after the first pass (each tail is shorter than its window)


# Who hears of segments as they are decoded (``segments_as_decoded``), in this thread or task.
_listener: ContextVar[Callable[[int, list[Segment]], None] | None] = ContextVar("segments_listener", default=None)


@contextlib.contextmanager
def segments_as_decoded(listener: Callable[[int, list[Segment]], None]):
    """Inside the block, :func:`transcribe_batched` calls ``listener(file, segments)`` with each
    file's segments, in time order, as soon as they are final (a group of windows and their
    tails decoded), instead of only returning them all at the end: the API's ``stream=true``
    sends a long file's first words while the rest is decoding. The windows are then decoded
    in file order, ``batch_size`` at a time, with the same decoder width as without a listener,
    so the segments are the same. An exception raised by ``listener`` stops the decoding (a
    streaming client that went away). A context variable rather than a parameter: the
    listener passes through ``Engine.transcript`` and the back-ends unchanged, and a back-end
    that decodes a file whole (``generate``, CTranslate2) simply never calls it."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


@dataclass(frozen=True)
class Window:
    """Samples ``start:end`` of file ``file`` (an index into the call's audios)."""

    file: int
    start: int
    end: int


def cut_windows(audio: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) sample spans of at most 30 s covering ``audio`` end to end, cut at quiet points."""
    n, spans, start = len(audio), [], 0
    search = int(CUT_SEARCH_SECONDS * SAMPLE_RATE)
    while n - start > N_SAMPLES:
        lo, hi = start + N_SAMPLES - search, start + N_SAMPLES
        cut = lo + _pause_middle(audio[lo:hi])
        spans.append((start, cut))
        start = cut
    spans.append((start, n))
    return spans


def _pause_middle(samples: np.ndarray) -> int:
    """The middle of the longest pause in ``samples`` (an offset into it): the longest run of
    10 ms frames within :data:`PAUSE_DB` of the quietest frames. The longest, not the
    quietest, pause: the gap after a sentence is longer than the gap after a comma or inside
    a word, and a window cut inside a sentence loses its last words (Whisper ends such a
    window with the unfinished segment's start time stamp and no text)."""
    energy = np.concatenate([[0.0], np.cumsum(np.square(samples, dtype=np.float64))])
    starts = np.arange(0, len(samples) - QUIET_FRAME + 1, QUIET_HOP)
    if not len(starts):
        return len(samples)
    db = 10 * np.log10((energy[starts + QUIET_FRAME] - energy[starts]) / QUIET_FRAME + 1e-10)
    quiet = np.concatenate([[False], db <= np.percentile(db, 5) + PAUSE_DB, [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    runs = edges.reshape(-1, 2)  # [first quiet frame, first loud frame after it)
    first, end = runs[np.argmax(runs[:, 1] - runs[:, 0])]
    return int(starts[(first + end - 1) // 2]) + QUIET_FRAME // 2


def supports(model, decoding: DecodingOptions) -> bool:
    """Whether this engine applies: a plain (merged) model and greedy decoding, no language model."""
    plain = decoding.beam_size == 1 and decoding.temperature[0] == 0.0 and not decoding.lm
    return supports_fast_path(model) and plain


def transcribe_batched(
    model,
    processor,
    audios: list[np.ndarray],
    language: str | None = None,
    task: str = "transcribe",
    batch_size: int = 16,
    decoding: DecodingOptions | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> list[tuple[list, str]]:
    """(segments, language) per 16 kHz clip of any length, as ``transcribe_audio`` returns
    them, with the windows of all clips decoded ``batch_size`` at a time (at most
    ``max_new_tokens`` tokens per window)."""
    decoding = decoding or DecodingOptions()
    if not supports(model, decoding):
        raise ValueError("batched transcription needs a plain model and greedy decoding from temperature 0")
    for audio in audios:
        check_finite(audio)
    windows = [Window(i, s, e) for i, a in enumerate(audios) for s, e in cut_windows(a)]
    languages = _languages(model, processor, audios, windows, language, batch_size)
    rows = min(batch_size, len(windows))  # a decoder no wider than the work
    listener = _listener.get()
    results: dict[Window, list] = {}
    done = [0] * len(audios)  # per file: the samples whose segments the listener has had
    # one pass over every window, tails after; for a listener, `rows` windows at a time in file
    # order, each group's tails before the next group (same decoder width: the same tokens)
    groups = [windows[i : i + rows] for i in range(0, len(windows), rows)] if listener else [windows]
    with torch.inference_mode():
        for group in groups:
            _decode_rounds(model, processor, audios, group, languages, task, rows, decoding, max_new_tokens, results)
            if listener:
                done = _report(listener, group, results, done)
    per_file = [[] for _ in audios]
    for window in sorted(results, key=lambda w: (w.file, w.start)):
        per_file[window.file] += results[window]
    return [(segments, languages[i]) for i, segments in enumerate(per_file)]


def _decode_rounds(model, processor, audios, windows, languages, task, rows, decoding, max_new_tokens, results):
    """Decode ``windows``, then their unfinished tails, round after round, into ``results``
    (window -> segments; a tail is a window of its own)."""
    pending = windows
    for round_ in range(MAX_ROUNDS + 1):
        tails = []
        for lang in dict.fromkeys(languages[w.file] for w in pending):  # one prompt per batch
            todo = [w for w in pending if languages[w.file] == lang]
            for i in range(0, len(todo), rows):
                batch = todo[i : i + rows]
                decoded = _decode(model, processor, audios, batch, lang, task, rows, max_new_tokens)
                for window, d in zip(batch, decoded):
                    last_round = round_ == MAX_ROUNDS
                    segments, tail = _window_segments(
                        model, processor, audios, window, d, lang, task, decoding, last_round
                    )
                    results[window] = segments
                    tails += [tail] if tail else []
        if not tails:
            break
        pending = tails


def _report(listener, group: list[Window], results: dict, done: list[int]) -> list[int]:
    """Give ``listener`` each file's segments that ``group`` made final (its windows and their
    tails, in time order); returns how far each file has been reported."""
    reached = list(done)
    for window in group:
        reached[window.file] = max(reached[window.file], window.end)
    for file in sorted({w.file for w in group}):
        new = sorted((w for w in results if w.file == file and done[file] <= w.start < reached[file]), key=_start)
        listener(file, [s for w in new for s in results[w]])
    return reached


def _languages(model, processor, audios, windows, language, batch_size) -> list[str]:
    """The language of each file: the one given, else Whisper's guess from its first window."""
    if language:
        return [language] * len(audios)
    device = next(model.parameters()).device
    first = [next(w for w in windows if w.file == i) for i in range(len(audios))]
    found = []
    for i in range(0, len(first), batch_size):
        chunk = first[i : i + batch_size]
        features = log_mel(processor.feature_extractor, [audios[w.file][w.start : w.end] for w in chunk], device)
        with torch.inference_mode():
            found += [detect_language(model, processor, f[None].to(device, input_dtype(model))) for f in features]
    return found


def _decode(model, processor, audios, batch: list[Window], language, task, batch_size, max_new_tokens):
    device = next(model.parameters()).device
    prompt = prompt_ids(model, processor.tokenizer, language, task, timestamps=True)
    max_initial = getattr(model.generation_config, "max_initial_timestamp_index", None) or MAX_INITIAL_TIMESTAMP
    decoder = decoder_for(
        model, batch_size, len(prompt) + max_new_tokens, input_dtype(model), timestamps=True, max_initial=max_initial
    )
    features = log_mel(processor.feature_extractor, [audios[w.file][w.start : w.end] for w in batch], device)
    return decoder.decode(features.to(device, input_dtype(model)), prompt, max_new_tokens)


def _window_segments(
    model, processor, audios, window: Window, decoded, language, task, decoding, last_round: bool = False
) -> tuple[list, Window | None]:
    """The window's segments in the file's time, after openai's checks on its scores, and the
    window's unfinished tail to decode again (None when the window ended its speech, or
    in the ``last_round``)."""
    tokenizer = processor.tokenizer
    text = tokenizer.decode(decoded.tokens, skip_special_tokens=True).strip()
    ratio = compression_ratio(text)
    doubtful = decoding.logprob_threshold is not None and decoded.avg_logprob < decoding.logprob_threshold
    silent = decoding.no_speech_threshold is not None and decoded.no_speech_prob > decoding.no_speech_threshold
    if silent and doubtful:
        return [], None
    loops = decoding.compression_ratio_threshold is not None and ratio > decoding.compression_ratio_threshold
    if (loops or doubtful) and not silent and len(decoding.temperature) > 1:
        audio = audios[window.file][window.start : window.end]
        return _fallback(model, processor, audio, window, language, task, decoding), None
    scores = {
        "temperature": 0.0,
        "avg_logprob": round(decoded.avg_logprob, 4),
        "compression_ratio": round(ratio, 4),
        "no_speech_prob": round(decoded.no_speech_prob, 4),
    }
    ts_begin = model.generation_config.no_timestamps_token_id + 1
    tokens, tail = decoded.tokens, None
    resume = None if last_round else resume_point(tokens, ts_begin)
    if resume is not None:
        cut, seconds = resume
        start = window.start + int(round(seconds * SAMPLE_RATE))
        if seconds > 0 and window.end - start >= MIN_TAIL_SECONDS * SAMPLE_RATE:
            tokens, tail = tokens[:cut], Window(window.file, start, window.end)
    offset, end = window.start / SAMPLE_RATE, window.end / SAMPLE_RATE
    segments = [
        _segment(start + offset, min(stop + offset, end), text, scores)
        for start, stop, text in split_segments(tokens, ts_begin, tokenizer, (window.end - window.start) / SAMPLE_RATE)
    ]
    return segments, tail


def _start(window: Window) -> int:
    return window.start


def resume_point(tokens: list[int], ts_begin: int) -> tuple[int, float] | None:
    """Where openai's loop would seek after this window: None when the window ends on a
    single closing time stamp (its speech is done) or holds no stamp; else (how many tokens
    to keep, the window time of the last stamp): the text after it, or the segment that a
    final pair of stamps opened, was left for a next window."""
    stamps = [i for i, t in enumerate(tokens) if t >= ts_begin]
    if not stamps:
        return None
    last = stamps[-1]
    if last == len(tokens) - 1 and (last == 0 or tokens[last - 1] < ts_begin):
        return None
    return last + 1, (tokens[last] - ts_begin) * TIME_PRECISION


def _fallback(model, processor, audio, window: Window, language, task, decoding) -> list:
    """The window alone through ``generate`` at the fallback temperatures after 0."""
    log.debug(
        "window at %.1f s of file %d fails the thresholds: decoding it again", window.start / SAMPLE_RATE, window.file
    )
    retry = decoding.with_fields(temperature=decoding.temperature[1:], condition_on_previous_text=False)
    segments, _ = transcribe_audio(model, processor, audio, language, task, decoding=retry)
    offset, end = window.start / SAMPLE_RATE, window.end / SAMPLE_RATE
    return [
        replace(s, start=round(min(s.start + offset, end), 3), end=round(min(s.end + offset, end), 3)) for s in segments
    ]


def split_segments(
    tokens: list[int], ts_begin: int, tokenizer, window_seconds: float
) -> list[tuple[float, float, str]]:
    """(start, end, text) in window time from time-stamped tokens: ``<|t0|> text <|t1|>`` pairs;
    text without a closing stamp ends at the window's end, without an opening one starts where
    the previous segment ended."""
    segments, text, start, last = [], [], None, 0.0
    for token in tokens:
        if token < ts_begin:
            text.append(token)
            continue
        t = (token - ts_begin) * TIME_PRECISION
        if text:
            segments.append((last if start is None else start, t, tokenizer.decode(text).strip()))
            text, start, last = [], None, t
        else:
            start = t
    if text:
        segments.append((last if start is None else start, window_seconds, tokenizer.decode(text).strip()))
    return [(s, max(s, e), t) for s, e, t in segments if t]


def _segment(start: float, end: float, text: str, scores: dict) -> Segment:
    return Segment(round(start, 3), round(max(start, end), 3), text, **scores)
