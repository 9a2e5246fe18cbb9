"""Decoding Whisper, every way whisper-tune does it, behind one :func:`open_engine`.

Layers, imported only downward (tests/test_architecture.py holds it):

* ``files``: the per-file loop and output writing (``whisper-tune transcribe``);
* ``engine``: :class:`Engine` and :func:`open_engine`, the only place a back-end is chosen;
* ``longform``: the batched long-form strategy (windows of many files decoded together);
* ``vad`` (speech found first, times mapped back) and ``words`` (word time stamps by
  cross-attention alignment), applied by the engine around every back-end;
* the back-ends: ``greedy`` (the fast decoder), ``generate`` (transformers' ``generate`` with
  robust decoding's fallback), ``ct2`` (faster-whisper), ``ggml`` (whisper.cpp, for checks);
* ``options`` and ``results``: :class:`DecodingOptions`, :class:`Segment`, :class:`Transcript`
  and the output writers.
"""

from .engine import Adapter, CT2Engine, Engine, GGMLEngine, TransformersEngine, open_engine
from .files import transcribe_files, write_transcripts
from .longform import segments_as_decoded
from .options import FALLBACK_TEMPERATURES, MAX_NEW_TOKENS, DecodingOptions, compression_ratio
from .results import Segment, Transcript, Word, expand_inputs, get_writer, output_names
from .vad import VadOptions

__all__ = [
    "Adapter",
    "CT2Engine",
    "DecodingOptions",
    "Engine",
    "FALLBACK_TEMPERATURES",
    "GGMLEngine",
    "MAX_NEW_TOKENS",
    "Segment",
    "Transcript",
    "TransformersEngine",
    "VadOptions",
    "Word",
    "compression_ratio",
    "expand_inputs",
    "get_writer",
    "open_engine",
    "output_names",
    "segments_as_decoded",
    "transcribe_files",
    "write_transcripts",
]
