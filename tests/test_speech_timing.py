"""espeak-ng's word events as reference timing: the same audio the command speaks, and a
start per word, in order, where the sound is."""

from __future__ import annotations

import numpy as np
from conftest import need_espeak

from whisper_tune.audio import SAMPLE_RATE, resample

SENTENCE = "आम्ही रविवारी बागेत फिरायला जातो."


def _first_in_a_process(*args):
    """timed_speech in a fresh process: the library carries state from one synthesis to the
    next (a sentence spoken twice in one process comes out about 30 samples, 1-2 ms, apart),
    so only a process's first synthesis is the command's audio sample for sample, and
    another test in this worker may have spoken before."""
    import pickle
    import subprocess
    import sys

    code = (
        "import pickle, sys; from whisper_tune.speech_timing import timed_speech; "
        f"sys.stdout.buffer.write(pickle.dumps(timed_speech(*{args!r})))"
    )
    return pickle.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout)


def test_the_library_speaks_what_the_command_speaks_with_a_start_per_word():
    need_espeak()
    from whisper_tune.demo_data import speak

    timed = _first_in_a_process(SENTENCE, "mr", "m1", 150, 50)
    samples, sr = speak(SENTENCE, "mr", "m1", 150, 50)
    command = resample(samples, sr, SAMPLE_RATE)
    n = min(len(command), len(timed.audio))
    assert n > 0.9 * len(timed.audio) and np.abs(command[:n] - timed.audio[:n]).max() < 1e-3
    assert timed.words == SENTENCE.split() and len(timed.starts) == len(timed.words)
    assert timed.starts == sorted(set(timed.starts)) and timed.starts[-1] < len(timed.audio) / SAMPLE_RATE
    for start in timed.starts:  # sound in the 100 ms after each start
        at = int(start * SAMPLE_RATE)
        assert np.abs(timed.audio[at : at + SAMPLE_RATE // 10]).max() > 0.01


def test_a_slower_voice_starts_every_word_later():
    need_espeak()
    from whisper_tune.speech_timing import timed_speech

    fast, slow = timed_speech(SENTENCE, "mr", "f2", 175, 50), timed_speech(SENTENCE, "mr", "f2", 110, 50)
    assert all(s > f for f, s in zip(fast.starts[1:], slow.starts[1:]))
