"""Alignment heads of a fine-tune, chosen again on held-out clips, and the word-start error
that decides it (``whisper-tune align-heads``).

Word time stamps (``inference/words.py``) read the cross-attention of a few decoder heads,
chosen by OpenAI for each base model. A LoRA fine-tune changes the attention's projections,
so its heads may no longer point at the frames where the tokens are spoken. This module
measures that and, where another set of heads does better, writes it into the adapter
folder (``alignment_heads.json``), which ``words.alignment_heads`` reads from then on.

The measure: the reference text of held-out clips of the demo corpus, aligned to their audio
(forced alignment: the text is known, so recognition errors do not enter), each word's start
compared with espeak-ng's own word event (``speech_timing.py``); the median absolute error
in seconds over all words but each clip's first (which starts at 0 s on both sides). The
choice: each head's error alone, heads ranked by it, and the number of best-ranked heads
(1 to :data:`MAX_HEADS`) whose combination has the lowest error. It is chosen on one split
(``dev``) and should be reported on another (``unseen``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .inference.words import HEADS_FILE, alignment_heads, forced_alignment, split_words, token_starts
from .speech_timing import TimedSpeech, timed_speech

MAX_HEADS = 16  # the most heads a chosen set holds (OpenAI's sets hold 6 to 23)


@dataclass(frozen=True)
class HeadChoice:
    """The heads chosen, their error and that of the heads the model came with (s)."""

    alignment_heads: list[tuple[int, int]]
    median_error_s: float
    previous_heads: list[tuple[int, int]]
    previous_error_s: float
    split: str
    clips: int
    words: int


def reference_clips(corpus: str | Path, split: str, limit: int | None = None) -> list[TimedSpeech]:
    """The demo corpus's ``split`` spoken again by espeak-ng with each clip's voice, speed and
    pitch, with each word's start (the first ``limit`` clips)."""
    from .demo_data import clip_plan

    plan = [r for r in clip_plan(corpus) if r["split"] == split][:limit]
    return [timed_speech(r["sentence"], r["language"], r["voice"], r["speed"], r["pitch"]) for r in plan]


@dataclass
class _Aligned:
    weights: object  # torch.Tensor [every head, tokens + 1, frames]
    tokens_per_word: list[int]
    reference: np.ndarray  # word starts (s)


def aligned_clips(model, processor, clips: list[TimedSpeech], language: str) -> list[_Aligned]:
    """Every head's cross-attention over each clip's reference text (a clip whose text splits
    into other words than espeak-ng spoke is left out)."""
    tokenizer = processor.tokenizer
    tokens = [tokenizer.encode(" " + " ".join(c.words), add_special_tokens=False) for c in clips]
    aligned = forced_alignment(model, processor, [c.audio for c in clips], tokens, language, "transcribe")
    out = []
    for clip, ids, (weights, _) in zip(clips, tokens, aligned):
        words = split_words(tokenizer, ids, language)
        if len(words) == len(clip.starts):
            out.append(_Aligned(weights, [n for _, n in words], np.array(clip.starts)))
    return out


def start_errors(aligned: list[_Aligned], heads: list[int]) -> np.ndarray:
    """|predicted - reference| word start (s) of every word, aligning with head indices ``heads``."""
    errors = []
    for clip in aligned:
        starts = token_starts(clip.weights[heads])
        firsts = np.cumsum([0, *clip.tokens_per_word[:-1]])
        # the first word is left out: the path starts at frame 0 and so does espeak-ng's first word
        errors.append(np.abs(starts[firsts] - clip.reference)[1:])
    return np.concatenate(errors) if errors else np.zeros(0)


def all_heads(model) -> list[tuple[int, int]]:
    config = model.config
    return [(layer, h) for layer in range(config.decoder_layers) for h in range(config.decoder_attention_heads)]


def choose_heads(model, processor, clips: list[TimedSpeech], language: str, folder=None, split="dev") -> HeadChoice:
    """The heads whose alignment of ``clips`` errs least, next to the model's own heads
    (``folder``: the adapter's, where it has some)."""
    every = all_heads(model)
    aligned = aligned_clips(model, processor, clips, language)
    previous = alignment_heads(model, folder)
    previous_error = float(np.median(start_errors(aligned, [every.index(h) for h in previous])))
    alone = [float(np.median(start_errors(aligned, [i]))) for i in range(len(every))]
    ranked = list(np.argsort(alone))
    best = min(range(1, MAX_HEADS + 1), key=lambda k: float(np.median(start_errors(aligned, ranked[:k]))))
    chosen = sorted(every[i] for i in ranked[:best])
    error = float(np.median(start_errors(aligned, ranked[:best])))
    words = sum(len(c.reference) for c in aligned)
    return HeadChoice(chosen, round(error, 4), list(previous), round(previous_error, 4), split, len(aligned), words)


def write_heads(choice: HeadChoice, folder: str | Path) -> Path:
    """``folder/alignment_heads.json``: the heads and how they were measured."""
    out = Path(folder) / HEADS_FILE
    out.write_text(json.dumps(asdict(choice), indent=2) + "\n", encoding="utf-8")
    return out
