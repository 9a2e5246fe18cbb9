"""Error rates of a model on prepared clips: batched greedy generation with the language
and task forced, decoded without special tokens, scored with jiwer.

Clips are generated longest first, so each batch pads little and the first batch shows
the worst-case memory at once. Every clip's reference, hypothesis, edit counts and flags
go into a per-clip report: repetition loops and runaway hypotheses, the two ways a
fine-tuned Whisper fails that a corpus-level WER hides.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import EVALUATE_MAX_NEW_TOKENS
from .errors import UserError
from .metrics import error_rates
from .normalizers import normalize, orthographic
from .processor import MAX_LABEL_TOKENS
from .run import write_eval_report

log = logging.getLogger(__name__)

LOOP_REPEATS = {1: 4, 2: 3, 3: 3, 4: 3}  # n-gram length -> consecutive repeats that make a loop
_CHAR_LOOP = re.compile(r"(\S{1,10}?)\1{7,}")  # loops inside a word (scripts written without spaces)
TOO_LONG_RATIO = 2.0  # a hypothesis this many times the reference's length (plus slack) is runaway


@dataclass
class GenerationResult:
    ids: list[str]
    references: list[str]
    hypotheses: list[str]
    seconds: float

    @property
    def clips_per_s(self) -> float:
        return len(self.hypotheses) / self.seconds if self.seconds else 0.0

    def scores(self) -> dict[str, float]:
        return error_rates(self.references, self.hypotheses)


def decode_dataset(
    engine,
    dataset,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    max_samples: int | None = None,
    progress: bool = False,
    decoding=None,
    min_new_tokens: int = 0,
) -> GenerationResult:
    """Transcribe every clip of a prepared dataset through ``engine`` (an
    ``inference.Engine``; results in the dataset's order), timed without the model's loading.

    The engine decodes with the language and task it was opened with, greedy unless
    ``decoding`` (``inference.DecodingOptions``) asks for its fallback and thresholds;
    ``min_new_tokens`` pins the length (benchmarks). Which decoder runs is the engine's
    rule (``TransformersEngine.fast_clips``)."""
    from tqdm.auto import tqdm

    n = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    durations = np.asarray(dataset.select_columns(["duration"])[:n]["duration"], dtype=np.float32)
    order = np.argsort(-durations, kind="stable")
    hyps: list[str | None] = [None] * n
    data = dataset.select_columns(["audio"]).with_format("numpy")
    engine.reserve(min(batch_size, n))
    with engine.evaluating():
        start = time.perf_counter()
        for i in tqdm(range(0, n, batch_size), desc="generate", unit="batch", disable=not progress):
            idx = order[i : i + batch_size].tolist()
            audios = [np.ascontiguousarray(data[j]["audio"], dtype=np.float32) for j in idx]
            texts = engine.decode_clips(audios, engine.language, engine.task, max_new_tokens, min_new_tokens, decoding)
            for j, text in zip(idx, texts):
                hyps[j] = text
        engine.synchronize()
        seconds = time.perf_counter() - start
    meta = dataset.select_columns(["id", "text"])[:n]
    return GenerationResult(meta["id"], meta["text"], hyps, seconds)


def prepared_split(processor, data, split: str, folder: Path, progress: bool = True):
    """``split`` of ``data`` prepared with ``processor`` (saved into ``folder/processor``),
    cached in ``folder/prepared``."""
    from .prepare import prepare_split

    processor.save_pretrained(folder / "processor")
    return prepare_split(data, split, folder / "prepared", str(folder / "processor"), progress=progress)


def score_split(
    engine,
    data,
    split: str,
    folder: Path,
    batch_size: int = 16,
    max_new_tokens: int = EVALUATE_MAX_NEW_TOKENS,
    max_samples: int | None = None,
    progress: bool = True,
    decoding=None,
):
    """Score a transformers engine on a split: (the prepared split, its GenerationResult).
    The one "score a model on a split" of ``evaluate``, ``parity`` and the benchmarks."""
    dataset = prepared_split(engine.processor, data, split, Path(folder), progress)
    warn_if_cut_short(dataset if max_samples is None else dataset[:max_samples], max_new_tokens)
    result = decode_dataset(engine, dataset, batch_size, max_new_tokens, max_samples, progress, decoding)
    return dataset, result


# ---- per-clip analysis ---------------------------------------------------------------


def has_loop(text: str) -> bool:
    """True when some word n-gram repeats back to back (``LOOP_REPEATS``) or a piece of a
    word repeats eight times or more: Whisper's classic failure after fine-tuning."""
    words = text.split()
    for n, repeats in LOOP_REPEATS.items():
        for start in range(len(words) - n * repeats + 1):
            gram = words[start : start + n]
            if all(words[start + k * n : start + (k + 1) * n] == gram for k in range(1, repeats)):
                return True
    return bool(_CHAR_LOOP.search(text))


def flags(reference: str, hypothesis: str) -> list[str]:
    """Why a clip deserves a look: ``repetition``, ``too_long``, ``empty``."""
    out = []
    if not hypothesis.strip():
        out.append("empty")
    if has_loop(hypothesis):
        out.append("repetition")
    ref_words, hyp_words = len(reference.split()), len(hypothesis.split())
    if hyp_words > TOO_LONG_RATIO * ref_words + 3 or len(hypothesis) > TOO_LONG_RATIO * len(reference) + 10:
        out.append("too_long")
    return out


def clip_report(clip_id: str, reference: str, hypothesis: str) -> dict:
    """One line of the per-clip JSONL: texts, word edit counts, error rates, flags."""
    import jiwer

    norm_ref, norm_hyp = normalize(reference), normalize(hypothesis)
    words = jiwer.process_words(reference, hypothesis)
    return {
        "id": clip_id,
        "reference": reference,
        "hypothesis": hypothesis,
        "errors": {
            "substitutions": words.substitutions,
            "deletions": words.deletions,
            "insertions": words.insertions,
            "reference_words": words.hits + words.substitutions + words.deletions,
        },
        "wer": 100.0 * words.wer,
        "normalized_wer": 100.0 * jiwer.wer(norm_ref, norm_hyp) if norm_ref else None,
        "flags": flags(reference, hypothesis),
    }


@dataclass
class EvalSummary:
    """What ``evaluate`` writes to summary.json."""

    wer: float
    cer: float
    normalized_wer: float
    normalized_cer: float
    n: int
    seconds: float
    clips_per_s: float
    flagged: dict[str, int] = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    decoding: dict = field(default_factory=lambda: {"name": "greedy"})  # inference.DecodingOptions.describe()


def summarize(
    result: GenerationResult, model_info: dict | None = None, decoding=None
) -> tuple[EvalSummary, list[dict]]:
    """Corpus-level rates (orthographic and normalized) and the per-clip reports; a UserError
    when there is nothing to score, since a rate over no words is NaN, not a result."""
    if not result.references:
        raise UserError("nothing to score: no clip was transcribed (is --max-samples 0?)")
    refs = [orthographic(r) for r in result.references]
    hyps = [orthographic(h) for h in result.hypotheses]
    ortho = error_rates(refs, hyps)
    pairs = [(normalize(r), normalize(h)) for r, h in zip(refs, hyps)]
    kept = [(r, h) for r, h in pairs if r]  # a reference of only punctuation has no words to score
    if not kept:
        raise UserError(
            f"nothing to score after normalization: none of the {len(refs)} references keeps a word "
            f"(only punctuation or bracketed tags); prepare the split again to reject such clips"
        )
    norm = error_rates([r for r, _ in kept], [h for _, h in kept])
    clips = [clip_report(i, r, h) for i, r, h in zip(result.ids, refs, hyps)]
    flagged: dict[str, int] = {}
    for clip in clips:
        for flag in clip["flags"]:
            flagged[flag] = flagged.get(flag, 0) + 1
    summary = EvalSummary(
        wer=ortho["wer"],
        cer=ortho["cer"],
        normalized_wer=norm["wer"],
        normalized_cer=norm["cer"],
        n=len(clips),
        seconds=result.seconds,
        clips_per_s=result.clips_per_s,
        flagged=flagged,
        model=model_info or {},
        decoding=decoding.describe() if decoding else {"name": "greedy"},
    )
    return summary, clips


def warn_if_cut_short(dataset, max_new_tokens: int) -> int:
    """Warn (and return how many) when references need more tokens than generation may make:
    their hypotheses are cut short and score worse whatever the model. Georgian takes two to
    three byte-level tokens a letter, so a 100-letter Common Voice sentence is ~290 tokens."""
    framing = 5  # <|startoftranscript|><|lang|><|task|><|notimestamps|> ... <|endoftext|>
    over = sum(1 for labels in dataset["labels"] if len(labels) - framing > max_new_tokens)
    if over:
        log.warning(
            "%d reference transcripts are longer than --max-new-tokens %d tokens: their hypotheses are cut short; "
            "raise --max-new-tokens (Whisper allows up to %d)",
            over,
            max_new_tokens,
            MAX_LABEL_TOKENS - framing + 1,
        )
    return over


def evaluate(
    base: str | None,
    adapter: str | None,
    data,
    split: str,
    out_dir: str | Path,
    exact: bool = False,
    batch_size: int = 16,
    max_new_tokens: int = EVALUATE_MAX_NEW_TOKENS,
    max_samples: int | None = None,
    progress: bool = True,
    decoding=None,
    encoder_window: str = "full",
) -> tuple[EvalSummary, Path]:
    """Measure WER/CER of base (+ adapter) on ``split`` of ``data`` (a ``DataConfig``); writes
    ``summary.json`` and ``clips.jsonl`` into ``out_dir`` (the prepared split is cached in
    ``out_dir/prepared``). Without ``adapter`` this is the zero-shot baseline. ``decoding``
    (``DecodingOptions``) replaces the default fast greedy search, whose numbers stay
    comparable with every earlier report; the summary records which one ran.
    ``encoder_window`` "longest": each batch in its longest clip instead of 30 s windows
    (``encoder_window.py``), as a model trained with ``model.encoder_window: longest``."""
    from .inference import open_engine
    from .modeling import pick_device

    device = pick_device()
    engine = open_engine(
        base, adapter, device=device, exact=exact, language=data.language, task=data.task, encoder_window=encoder_window
    )
    loaded = engine.loaded
    _, result = score_split(
        engine, data, split, Path(out_dir), batch_size, max_new_tokens, max_samples, progress, decoding
    )
    out = Path(out_dir)
    info = {
        "base": loaded.base,
        "adapter": loaded.adapter,
        "mode": loaded.describe(),
        "quantization": loaded.holding.name,
        "merged": loaded.merged,
        "language": loaded.language,
        "task": loaded.task,
        "data": data.source,
        "split": split,
        "device": str(device),
        "encoder_window": getattr(engine, "encoder_window", "full"),
    }
    summary, clips = summarize(result, info, decoding)
    return summary, write_eval_report(out, asdict(summary), clips)
