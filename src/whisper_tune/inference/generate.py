"""The sequential back-end: transformers' Whisper ``generate`` with time stamps, window after
window (openai's long-form loop: each 30 s window starts where the last complete segment
ended and may be prompted with its text), with robust decoding's fallback and thresholds and
the scores of each window.

Used where the batched fast decoder does not apply (an adapter left unmerged, an 8-bit base,
beam search, sampling from a temperature above 0, a prompt, previous-text conditioning on a
long file) and for the windows the batched engine decodes again at a fallback temperature.
``engine.open_engine`` decides which; nothing here chooses.

Two private parts of transformers' generate are replaced for a call (:func:`scored_windows`):
both are rows of ``patches.PATCHES`` (:data:`WINDOW_SCORES`); where they do not fit the
installed transformers, decoding runs on transformers' own code without the scores.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import numpy as np
import torch

from ..audio import CHUNK_SECONDS, check_finite, duration
from ..features import log_mel_whole
from ..modeling import input_dtype, quiet_generate
from ..patches import WRITTEN_FOR, Patch, register, usable
from .fusion import fusion_kwargs
from .options import FALLBACK_SEED, MAX_NEW_TOKENS, DecodingOptions, compression_ratio
from .results import Segment


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
    max_new_tokens: int = MAX_NEW_TOKENS,
    prompt: str | None = None,
    decoding: DecodingOptions | None = None,
) -> tuple[list[Segment], str]:
    """Segments with time stamps and window scores for one 16 kHz clip of any length, and
    the language used.

    ``prompt`` is Whisper's initial prompt (previous-text tokens before the first window:
    spellings, names, style). ``decoding`` defaults to openai/whisper's: greedy with
    temperature fallback and its thresholds (see ``inference.options``).
    """
    check_finite(audio)  # NaN features decode as "!!!!": refuse, as for an unreadable file
    decoding = decoding or DecodingOptions()
    device = next(model.parameters()).device
    if decoding.condition_on_previous_text:  # room for up to 224 previous tokens + 4 start tokens
        max_new_tokens = min(max_new_tokens, model.config.max_target_positions // 2 - 5)
    options = decoding.generate_kwargs() | fusion_kwargs(decoding, model, processor.tokenizer)
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


# ---- window scores (robust decoding) -------------------------------------------------


@dataclass(frozen=True)
class WindowScore:
    """What a decoded 30 s window ended with (the last attempt's values)."""

    temperature: float
    avg_logprob: float | None
    compression_ratio: float
    no_speech_prob: float | None


NEED_FALLBACK_ARGS = (
    "seek_sequence",
    "seek_outputs",
    "index",
    "logits_processor",
    "generation_config",
    "vocab_size",
    "temperature",
)  # WhisperGenerationMixin._need_fallback's, in order


def _fits_window_scores(model=None) -> bool:
    """generate's fallback hooks are there, with the arguments :func:`scored_windows` passes."""
    try:
        from transformers.generation.logits_process import WhisperNoSpeechDetection  # noqa: F401
        from transformers.models.whisper.generation_whisper import WhisperGenerationMixin as mixin
    except ImportError:
        return False
    hooks = ("_need_fallback", "_retrieve_compression_ratio", "_retrieve_avg_logprobs")
    if not all(callable(getattr(mixin, name, None)) for name in hooks):
        return False
    return tuple(inspect.signature(mixin._need_fallback).parameters)[1:] == NEED_FALLBACK_ARGS


WINDOW_SCORES = register(
    Patch(
        "window_scores",
        WRITTEN_FOR,
        _fits_window_scores,
        fallback="decoding on transformers' own fallback: window scores are not reported and the compression "
        "ratio is measured on token bytes, not on the text",
    )
)


@contextlib.contextmanager
def scored_windows(model, tokenizer):
    """Within the block, ``model.generate`` measures compression on the window's text (as
    openai/whisper) and records a :class:`WindowScore` per window; yields a dict from
    ``id(segment["result"])`` to its score (segments of one window share their result).
    The two instance attributes set here shadow the class's methods and are removed after.
    Where :data:`WINDOW_SCORES` does not fit this transformers, the dict stays empty."""
    whisper = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not usable(WINDOW_SCORES, whisper):
        yield {}
        return
    need_fallback = whisper._need_fallback  # bound, before the shadowing below
    scores, keep = {}, []

    def text_ratio(tokens, vocab_size):
        return compression_ratio(tokenizer.decode(tokens, skip_special_tokens=True).strip())

    def recording(seek_sequence, seek_outputs, index, logits_processor, generation_config, vocab_size, temperature):
        decision = need_fallback(
            seek_sequence, seek_outputs, index, logits_processor, generation_config, vocab_size, temperature
        )
        result = seek_outputs[index]
        keep.append(result)  # alive until the block ends, so no id is reused
        scores[id(result)] = WindowScore(
            float(temperature or 0.0),
            _avg_logprob(whisper, result, seek_sequence, temperature),
            text_ratio(seek_sequence, vocab_size),
            _no_speech_prob(logits_processor, index),
        )
        return decision

    whisper._retrieve_compression_ratio = text_ratio
    whisper._need_fallback = recording
    try:
        yield scores
    finally:
        del whisper._retrieve_compression_ratio, whisper._need_fallback


def _avg_logprob(whisper, result, sequence, temperature) -> float | None:
    """transformers' own measure (the one its fallback compares), end-of-text included."""
    if not isinstance(result, dict) or not result.get("scores"):
        return None
    return float(whisper._retrieve_avg_logprobs(result["scores"], sequence, temperature or 0.0))


def _no_speech_prob(logits_processor, index: int) -> float | None:
    from transformers.generation.logits_process import WhisperNoSpeechDetection

    for proc in logits_processor or []:
        if isinstance(proc, WhisperNoSpeechDetection):
            probs = proc.no_speech_prob
            return float(probs[index]) if len(probs) > index else None
    return None


@contextlib.contextmanager
def seeded(device):
    """A forked RNG seeded with :data:`FALLBACK_SEED` (CUDA's too, on a GPU)."""
    devices = [device] if getattr(device, "type", None) == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(FALLBACK_SEED)
        yield


@contextlib.contextmanager
def decoding_session(model, tokenizer, device):
    """What every robust ``generate`` call runs inside (transcription and evaluation alike):
    seeded fallback sampling and :func:`scored_windows`; yields the window scores."""
    with seeded(device), scored_windows(model, tokenizer) as scores:
        yield scores
