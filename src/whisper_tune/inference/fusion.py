"""Shallow fusion: the decoder's next-token log-probabilities plus ``weight`` times an
n-gram model's (``text_lm.NgramLM``, built from the user's sentences with ``build-lm``),
plus ``length_bonus`` for each text token, as a transformers ``LogitsProcessor`` inside
Whisper's ``generate`` (greedy and beam search alike).

    score(t) = log P_whisper(t | audio, text) + weight * log P_lm(t | text) + length_bonus * [t is text]

Why it is built this way:

* The decoder's scores are put through ``log_softmax`` first: greedy search hands a
  processor raw logits and beam search log-probabilities, and fusion must add the same
  thing to both. With weight 0 and no bonus the scores pass through untouched.
* The n-gram model scores the text tokens and the end (``<|endoftext|>``). A time-stamp
  token closes a segment, so it gets the end's score (after ``<|notimestamps|>`` time stamps
  are ruled out, with the other special tokens). The other special tokens (start,
  language, task, ``<|notimestamps|>``) never follow the start tokens in a transcript and
  are outside the model's support: fusion rules them out, as a product of the two
  distributions would (a weak or random decoder otherwise repeats them).
* The context is the text after the decoder's start tokens (transformers calls
  ``set_begin_index`` with their number; a prompt's tokens come before it and are not
  counted) and, with time stamps, after the last one: each segment is scored as a
  sentence of its own, as the model was built from sentences.
* The fast decoder (``greedy.py``) and faster-whisper have no place for a processor: a
  fused decoding takes ``generate`` (``engine.TransformersEngine.batched`` and
  ``fast_clips``), and a CTranslate2 model refuses ``--lm`` in one line.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ..text_lm import NgramLM
from .options import DecodingOptions


class ShallowFusion(LogitsProcessor):
    """Adds ``weight * log P_lm`` (and ``length_bonus`` per text token) to each row's scores;
    ``timestamp_begin``: the first time-stamp id (``<|0.00|>``), None where the model has none."""

    def __init__(self, lm: NgramLM, weight: float, length_bonus: float = 0.0, timestamp_begin: int | None = None):
        self.lm, self.weight, self.length_bonus = lm, float(weight), float(length_bonus)
        self.timestamp_begin = timestamp_begin  # first time-stamp id (<|0.00|>), where the model has them
        self.begin: int | None = None

    def set_begin_index(self, begin_index: int) -> None:
        """Where the decoded text starts in ``input_ids`` (transformers' Whisper generate calls it)."""
        self.begin = begin_index

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.weight == 0 and self.length_bonus == 0:
            return scores
        if self.begin is None:  # called outside Whisper's generate: the first call sees the start tokens alone
            self.begin = input_ids.shape[1]
        eos = self.lm.eos
        rows = input_ids[:, self.begin :].tolist()
        lm = np.stack([self.lm.logprobs(self._sentence(row)) for row in rows])
        extra = torch.zeros_like(scores, dtype=torch.float32)
        extra[:, : eos + 1] = self.weight * torch.from_numpy(lm).to(scores.device)
        extra[:, :eos] += self.length_bonus
        stamps = self.timestamp_begin if self.timestamp_begin is not None else scores.shape[1]
        extra[:, eos + 1 : stamps] = -float("inf")
        timed = stamps < scores.shape[1] and not bool((input_ids[:, : self.begin] == stamps - 1).any())
        extra[:, stamps:] = extra[:, eos : eos + 1] if timed else -float("inf")  # after <|notimestamps|>: none
        return (scores.float().log_softmax(-1) + extra).to(scores.dtype)

    def _sentence(self, row: list[int]) -> list[int]:
        """The text tokens of the segment being decoded (after the last time stamp, if any)."""
        if self.timestamp_begin is not None:
            last = max((i for i, t in enumerate(row) if t >= self.timestamp_begin), default=-1)
            row = row[last + 1 :]
        return [t for t in row if t < self.lm.eos]


@lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int) -> NgramLM:
    return NgramLM.load(path)


def load_lm(path: str) -> NgramLM:
    """The model in ``path``, read once per file version (a long transcription decodes many windows)."""
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        mtime = 0  # NgramLM.load says what is wrong
    return _load(str(path), mtime)


def fusion_kwargs(decoding: DecodingOptions | None, model, tokenizer) -> dict:
    """``generate``'s ``logits_processor`` for ``decoding``'s language model, or nothing."""
    if decoding is None or decoding.lm is None:
        return {}
    lm = load_lm(decoding.lm)
    lm.check_tokenizer(tokenizer)
    config = getattr(model, "generation_config", None)
    no_timestamps = getattr(config, "no_timestamps_token_id", None)
    stamps = None if no_timestamps is None else no_timestamps + 1
    fusion = ShallowFusion(lm, decoding.lm_weight, decoding.lm_length_bonus, stamps)
    return {"logits_processor": LogitsProcessorList([fusion])}
