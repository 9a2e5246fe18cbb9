"""The CTranslate2 back-end: an ``export-ct2`` folder run by faster-whisper, the fastest engine
for a finished model on a CPU (benchmarks/results/cpu_transcribe.md). Same audio, same
:class:`~.results.Segment`, same :class:`~.options.DecodingOptions` (faster-whisper
implements openai/whisper's fallback under the same names, spelled once in
``DecodingOptions.faster_whisper_kwargs``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..audio import check_finite
from ..errors import UserError
from .options import DecodingOptions
from .results import Segment, Word


def is_ct2_model(path: str | Path) -> bool:
    """A CTranslate2 model folder, as ``export-ct2`` writes it."""
    return (Path(path) / "model.bin").is_file()


def load_ct2(model_dir: str | Path, compute_type: str = "default"):
    """A faster-whisper model for a CTranslate2 folder, or UserError saying what to install."""
    try:
        from faster_whisper import WhisperModel
    except ImportError:
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
    hotwords: str | None = None,
    word_timestamps: bool = False,
) -> tuple[list[Segment], str]:
    """``generate.transcribe_audio`` for a faster-whisper model (``load_ct2``): one 16 kHz clip
    -> (segments with their window scores, language), with the same ``decoding`` options.
    ``hotwords`` is faster-whisper's: words put after ``<|startofprev|>`` in every window,
    before any previous text (``prompt``, openai's initial prompt, is that previous text
    for the first window only). ``word_timestamps``: faster-whisper's own (cross-attention
    DTW on the model's alignment heads, as ``words.py`` does for transformers)."""
    check_finite(audio)
    segments, info = model.transcribe(
        audio,
        language=language,
        task=task,
        initial_prompt=prompt or None,
        hotwords=hotwords or None,
        word_timestamps=word_timestamps,
        vad_filter=False,  # VAD runs above the back-ends (vad.py), the same for every engine
        **(decoding or DecodingOptions()).faster_whisper_kwargs(),
    )
    return [_ct2_segment(s) for s in segments], info.language


def greedy_text_ct2(model, audio: np.ndarray, language: str, task: str, max_new_tokens: int, suppress: bool) -> str:
    """One clip of at most 30 s as evaluation decodes it: greedy from temperature 0, no
    fallback, no time stamps, no window dropped as silence, at most ``max_new_tokens``
    tokens; ``suppress`` the non-speech tokens as the source's generation config does."""
    options = DecodingOptions.greedy().faster_whisper_kwargs() | {
        "without_timestamps": True,
        "max_new_tokens": max_new_tokens,
        "suppress_tokens": [-1] if suppress else [],
        "vad_filter": False,
    }
    segments, _ = model.transcribe(audio, language=language, task=task, **options)
    return "".join(s.text for s in segments)


def _ct2_segment(s) -> Segment:
    start, end = round(s.start, 3), round(s.end, 3)
    words = None
    if s.words is not None:  # inside their segment, as words.py's are
        words = tuple(
            Word(
                min(max(round(w.start, 3), start), end),
                min(max(round(w.end, 3), start), end),
                w.word.strip(),
                round(w.probability, 4),
            )
            for w in s.words
            if w.word.strip()
        )
    return Segment(
        round(s.start, 3),
        round(s.end, 3),
        s.text.strip(),
        temperature=s.temperature,
        avg_logprob=round(s.avg_logprob, 4),
        compression_ratio=round(s.compression_ratio, 4),
        no_speech_prob=round(s.no_speech_prob, 4),
        words=words,
    )
