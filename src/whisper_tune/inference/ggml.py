"""The whisper.cpp back-end (``pywhispercpp``), for checking an ``export-ggml`` file against its
source: greedy with one candidate, no temperature fallback, no time stamps, one segment per
clip, as evaluation decodes the source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def greedy_texts_ggml(
    path: Path, audios: list[np.ndarray], language: str, task: str, max_new_tokens: int, window: int, suppress: bool
) -> list[str]:
    """The text of each clip. whisper.cpp's ``max_tokens`` ends a window after max_tokens + 1
    tokens; 0 leaves its own cap (``window``). The model lives only for this call:
    pywhispercpp's ``__del__`` fails if it lives until interpreter exit."""
    from pywhispercpp.model import Model

    model = Model(
        str(path),
        redirect_whispercpp_logs_to=None,
        language=language,
        translate=task == "translate",
        no_timestamps=True,
        single_segment=True,
        no_context=True,
        temperature=0.0,
        temperature_inc=0.0,
        greedy={"best_of": 1},
        no_speech_thold=2.0,  # a probability never exceeds it: no clip is skipped as silence
        suppress_nst=suppress,
        max_tokens=0 if max_new_tokens >= window else max_new_tokens - 1,
        print_progress=False,
        print_realtime=False,
    )
    return ["".join(s.text for s in model.transcribe(audio)) for audio in audios]
