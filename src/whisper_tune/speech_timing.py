"""Reference word timing for the demo corpus: espeak-ng's own word events.

The demo corpus is spoken by espeak-ng (``demo_data.py``), and the synthesizer knows where
each word starts: its library reports a word event, with its position in the audio, as it
synthesizes. Spoken again with a held-out clip's voice, speed and pitch, a sentence gives
audio and the exact start of each of its words, the reference that word time stamps
(``inference/words.py``) and the alignment heads of a fine-tune (``align_heads.py``) are
measured against, with no hand labelling and no second aligner.

The library is called through ctypes (``libespeak-ng.so.1``, installed with the espeak-ng
command): ``espeak_Synth`` in synchronous mode with a callback that keeps the samples and
the word events. The settings are the command's (``-v LANG+VOICE -s SPEED -p PITCH``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from dataclasses import dataclass

import numpy as np

from .audio import SAMPLE_RATE, resample
from .errors import UserError

EVENT_WORD, EVENT_END = 1, 5  # espeak_EVENT_TYPE: espeakEVENT_WORD, espeakEVENT_MSG_TERMINATED is 6
RATE, PITCH = 1, 3  # espeak_PARAMETER: espeakRATE, espeakPITCH
SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: AUDIO_OUTPUT_SYNCHRONOUS
CHARS_UTF8, POS_CHARACTER = 1, 1


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms from the start of the text
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))
_LOCK = threading.Lock()  # the library holds one voice and one callback


@dataclass(frozen=True)
class TimedSpeech:
    """16 kHz audio of a sentence and where each of its words starts (s), in order."""

    audio: np.ndarray
    words: list[str]
    starts: list[float]


@functools.lru_cache(maxsize=1)
def _library():
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        raise UserError("reference timing needs espeak-ng's library: apt-get install espeak-ng") from None
    rate = lib.espeak_Initialize(SYNCHRONOUS, 0, None, 0)
    if rate <= 0:
        raise UserError("espeak-ng's library did not start (espeak_Initialize failed)")
    return lib, rate


def timed_speech(text: str, language: str, voice: str, speed: int, pitch: int) -> TimedSpeech:
    """``text`` spoken as ``demo_data.speak`` speaks it, with the start of each word."""
    lib, rate = _library()
    chunks, events = [], []

    def keep(wav, count, event):
        if count > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        i = 0
        while event[i].type != 0:  # espeakEVENT_LIST_TERMINATED
            if event[i].type == EVENT_WORD:
                events.append((event[i].text_position, event[i].audio_position / 1000.0))
            i += 1
        return 0

    callback = _CALLBACK(keep)
    data = text.encode("utf-8")
    with _LOCK:
        lib.espeak_SetSynthCallback(callback)
        if lib.espeak_SetVoiceByName(f"{language}+{voice}".encode()) != 0:
            raise UserError(f"espeak-ng has no voice {language}+{voice}")
        lib.espeak_SetParameter(RATE, speed, 0)
        lib.espeak_SetParameter(PITCH, pitch, 0)
        lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
    samples = np.concatenate(chunks).astype(np.float32) / 32768.0 if chunks else np.zeros(0, np.float32)
    events.sort()
    return TimedSpeech(resample(samples, rate, SAMPLE_RATE), text.split(), [t for _, t in events])
