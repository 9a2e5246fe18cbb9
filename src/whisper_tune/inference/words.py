"""Word time stamps by cross-attention alignment: openai/whisper's ``timing.py`` method on a
transformers model (merged, or base + unmerged adapter).

A few decoder heads attend, token by token, to the audio frames where the token is spoken
(the model's *alignment heads*, ``generation_config.alignment_heads``). The decoded text is
fed back through the decoder once (teacher forcing, one forward pass per group of segments
of at most 30 s); those heads' cross-attention, normalized per frame and median-filtered,
is a token-by-frame cost matrix, and dynamic time warping finds the monotone path through
it: the frame where each token starts. A word starts at its first token's frame and ends
where the next word starts (20 ms frames: the encoder's 1500 per 30 s window).

Why it is built this way:

* A pass after decoding, not inside it: every back-end's segments (the batched fast
  decoder, ``generate``, VAD-joined audio) get words the same way, and the decoding paths
  stay as they are. transformers' ``return_token_timestamps`` does the same inside
  ``generate`` only, and needs eager attention to return the weights; here the queries and
  keys of the cross-attention are caught by forward hooks and the weights computed for the
  heads asked for, whatever attention kernel the model runs.
* Heads: an adapter folder's ``alignment_heads.json`` (``whisper-tune align-heads``, for a
  fine-tune whose heads moved), else the model's generation config, else openai's default
  (every head of the decoder's second half).
* DTW is vectorized over frames per token (numpy, no numba): a 30 s window of 100 tokens
  takes milliseconds.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..audio import N_SAMPLES, SAMPLE_RATE
from ..features import log_mel
from ..modeling import input_dtype
from .greedy import prompt_ids
from .results import Segment, Word

FRAMES_PER_SECOND = 50  # encoder frames: 1500 per 30 s window
MEDIAN_WIDTH = 7  # openai's medfilt_width over frames
HEADS_FILE = "alignment_heads.json"  # written into an adapter folder by align-heads
NO_SPACE_LANGUAGES = ("zh", "ja", "th", "lo", "my", "yue")  # words are characters, as openai splits them
ALIGN_BATCH = 8  # groups of segments aligned per forward pass


def alignment_heads(model, folder: str | Path | None = None) -> list[tuple[int, int]]:
    """(decoder layer, head) pairs to align with: ``folder``'s :data:`HEADS_FILE`, else the
    model's generation config, else every head of the decoder's second half (openai's default)."""
    if folder is not None and (Path(folder) / HEADS_FILE).is_file():
        return [tuple(h) for h in json.loads((Path(folder) / HEADS_FILE).read_text())["alignment_heads"]]
    heads = getattr(_whisper(model).generation_config, "alignment_heads", None)
    if heads:
        return [tuple(h) for h in heads]
    layers, per_layer = model.config.decoder_layers, model.config.decoder_attention_heads
    return [(layer, h) for layer in range(layers // 2, layers) for h in range(per_layer)]


def _whisper(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# ---- cross-attention ----------------------------------------------------------------


@contextlib.contextmanager
def _caught_cross_attention(whisper):
    """Within the block, each decoder layer's cross-attention input (queries' hidden states,
    encoder states) is kept by layer index."""
    caught: dict[int, tuple] = {}
    hooks = []
    for i, layer in enumerate(whisper.model.decoder.layers):

        def hook(module, args, kwargs, i=i):
            caught[i] = (args[0] if args else kwargs["hidden_states"], kwargs["key_value_states"])

        hooks.append(layer.encoder_attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield caught
    finally:
        for h in hooks:
            h.remove()


def cross_attention(model, features: torch.Tensor, tokens: torch.Tensor, frames: list[int], heads=None):
    """Teacher-forced pass of ``tokens`` [batch, length] over ``features``: (weights per item,
    [heads, length, frames_i] softmaxed over the item's ``frames`` encoder frames, for
    ``heads`` (None: all), and the log-probabilities [batch, length, vocab])."""
    whisper = _whisper(model)
    layers = whisper.model.decoder.layers
    heads = heads or [(i, h) for i in range(len(layers)) for h in range(layers[0].encoder_attn.num_heads)]
    with torch.inference_mode(), _caught_cross_attention(whisper) as caught:
        logits = whisper(input_features=features, decoder_input_ids=tokens).logits
        per_layer = {}
        for i in sorted({layer for layer, _ in heads}):
            attn, (hidden, encoded) = layers[i].encoder_attn, caught[i]
            q = (attn.q_proj(hidden) * attn.scaling).unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)
            k = attn.k_proj(encoded).unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)
            per_layer[i] = (q.float() @ k.float().transpose(-1, -2)).cpu()  # [batch, heads, length, 1500]
    stacked = torch.stack([per_layer[layer][:, h] for layer, h in heads], dim=1)
    weights = [stacked[b, :, :, : frames[b]].softmax(dim=-1) for b in range(len(frames))]
    return weights, logits.float().log_softmax(-1).cpu()


def token_starts(weights: torch.Tensor) -> np.ndarray:
    """The frame (s) where each token row of ``weights`` [heads, tokens, frames] starts, and
    the end of the last: openai's normalization, median filter and DTW. Length tokens + 1."""
    from transformers.models.whisper.generation_whisper import _median_filter  # the filter of its own timestamps

    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    matrix = _median_filter((weights - mean) / (std + 1e-8), MEDIAN_WIDTH).mean(0).numpy()
    rows, cols = dtw(-matrix.astype(np.float64))
    jumps = np.pad(np.diff(rows), (1, 0), constant_values=1).astype(bool)
    starts = cols[jumps] / FRAMES_PER_SECOND
    return np.append(starts, cols[-1] / FRAMES_PER_SECOND + 1 / FRAMES_PER_SECOND)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotone path through ``cost`` [rows, cols] from (0, 0) to the last cell,
    moving right, down or diagonally: (row, col) of each step. A row's cells come from one
    running minimum: ``c[j] = m[j] + min(a[j], c[j-1])`` with ``a`` the best of the row above
    is ``M[j] + min over k <= j of (a[k] - M[k-1])``, ``M`` the row's cumulative sum."""
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf)
    total[0, 0] = 0.0
    trace = np.zeros((n + 1, m + 1), dtype=np.int8)  # 0 diagonal, 1 from above, 2 from the left
    for i in range(1, n + 1):
        diagonal, above = total[i - 1, :-1], total[i - 1, 1:]
        best = np.minimum(diagonal, above)
        running = np.cumsum(cost[i - 1])
        row = running + np.minimum.accumulate(best - (running - cost[i - 1]))
        total[i, 1:] = row
        left = np.concatenate([[False], row[:-1] < best[1:]])
        trace[i, 1:] = np.where(left, 2, np.where(diagonal < above, 0, 1))
    trace[0, :], trace[:, 0] = 2, 1
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    rows, cols = np.array(path[::-1]).T
    return rows, cols


# ---- words ----------------------------------------------------------------------------


def split_words(tokenizer, tokens: list[int], language: str | None) -> list[tuple[str, int]]:
    """(word, how many tokens) in order: tokens joined until they decode to whole characters;
    a piece starting with a space starts a word (characters are words in ``NO_SPACE_LANGUAGES``)."""
    pieces, current = [], []
    for token in tokens:
        current.append(token)
        text = tokenizer.decode(current)
        if "\ufffd" not in text:
            pieces.append((text, len(current)))
            current = []
    if current:
        pieces.append((tokenizer.decode(current), len(current)))
    if language in NO_SPACE_LANGUAGES:
        return [(t.strip(), n) for t, n in pieces if t.strip()] or pieces
    words: list[list] = []
    for text, n in pieces:
        if not words or text.startswith(" ") or not words[-1][0].strip():
            words.append([text, n])
        else:
            words[-1][0] += text
            words[-1][1] += n
    return [(w.strip(), n) for w, n in words]


@dataclass
class _Group:
    """Consecutive segments of at most 30 s aligned together."""

    start: int  # samples
    end: int
    segments: list[int]


def _groups(segments: list[Segment], total: int) -> list[_Group]:
    groups: list[_Group] = []
    for i, s in enumerate(segments):
        start, end = int(s.start * SAMPLE_RATE), min(int(np.ceil(s.end * SAMPLE_RATE)), total)
        if groups and end - groups[-1].start <= N_SAMPLES:
            groups[-1].end, groups[-1].segments = max(groups[-1].end, end), groups[-1].segments + [i]
        else:
            groups.append(_Group(start, min(max(end, start + 1), start + N_SAMPLES), [i]))
    return groups


def add_words(
    model, processor, audio: np.ndarray, segments: list[Segment], language: str, task: str, heads=None
) -> list[Segment]:
    """``segments`` of the 16 kHz ``audio`` with their :class:`Word` s, each word inside its
    segment and the words in order."""
    tokenizer = processor.tokenizer
    texts = [tokenizer.encode(" " + s.text.strip(), add_special_tokens=False) for s in segments]
    texts = [t if s.text.strip() else [] for t, s in zip(texts, segments)]
    groups = _groups(segments, len(audio))
    clips = [audio[g.start : g.end] for g in groups]
    tokens = [[t for i in g.segments for t in texts[i]] for g in groups]
    words: dict[int, tuple[Word, ...]] = {}
    aligned = forced_alignment(model, processor, clips, tokens, language, task, heads or alignment_heads(model))
    for g, (weights, probs) in zip(groups, aligned):
        starts = token_starts(weights) + g.start / SAMPLE_RATE
        words |= _segment_words(segments, g, texts, starts, probs, tokenizer, language)
    return [replace(s, words=words.get(i, ())) for i, s in enumerate(segments)]


def forced_alignment(model, processor, clips, tokens, language: str, task: str, heads=None):
    """Per clip (16 kHz, at most 30 s) and its text ``tokens``: the cross-attention of ``heads``
    (None: every head) [heads, tokens + 1, frames], a row per text token and one for the end
    of text, each the row of the position that predicts it, and each token's probability."""
    tokenizer = processor.tokenizer
    prefix = prompt_ids(model, tokenizer, language, task)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    device = next(model.parameters()).device
    out = []
    for b in range(0, len(clips), ALIGN_BATCH):
        batch = clips[b : b + ALIGN_BATCH]
        features = log_mel(processor.feature_extractor, batch, device).to(device, input_dtype(model))
        sequences = [prefix + list(t) + [eot] for t in tokens[b : b + ALIGN_BATCH]]
        width = max(map(len, sequences))
        ids = torch.tensor([s + [eot] * (width - len(s)) for s in sequences], device=device)
        frames = [max(1, len(c) // (2 * 160)) for c in batch]  # 160 samples per mel frame, 2 per encoder frame
        weights, logprobs = cross_attention(model, features, ids, frames, heads)
        for k, sequence in enumerate(sequences):
            first, last = len(prefix) - 1, len(sequence) - 1  # positions predicting the text and the end
            picked = logprobs[k, first : last - 1].gather(-1, ids[k, first + 1 : last, None].cpu())
            out.append((weights[k][:, first:last], picked.exp().flatten().numpy()))
    return out


def _segment_words(segments, group: _Group, texts, starts, probs, tokenizer, language) -> dict:
    """The group's words per segment: token start times to words, clamped into the segment."""
    out, at = {}, 0
    for i in group.segments:
        s, found = segments[i], []
        for word, n in split_words(tokenizer, texts[i], language):
            begin = min(max(round(float(starts[at]), 3), s.start), s.end)
            end = min(max(round(float(starts[at + n]), 3), begin), s.end)
            found.append(Word(begin, end, word, round(float(probs[at : at + n].mean()), 4)))
            at += n
        out[i] = tuple(w for w in found if w.word)
    return out
