"""Error rates of a model on prepared clips: batched greedy generation with the language
and task forced, decoded without special tokens, scored with jiwer.

Clips are generated longest first, so each batch pads little and the first batch shows
the worst-case memory at once. Every clip's reference, hypothesis, edit counts and flags
go into a per-clip report: repetition loops and runaway hypotheses, the two ways a
fine-tuned Whisper fails that a corpus-level WER hides.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import EVALUATE_MAX_NEW_TOKENS
from .errors import UserError
from .features import log_mel
from .metrics import error_rates
from .modeling import input_dtype, quiet_generate
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


def generate_on(
    model,
    processor,
    dataset,
    language: str | None,
    task: str = "transcribe",
    batch_size: int = 16,
    max_new_tokens: int = 128,
    amp: torch.dtype | None = None,
    max_samples: int | None = None,
    progress: bool = False,
    generate_kwargs: dict | None = None,
    engine: str = "auto",
    decoding=None,
) -> GenerationResult:
    """Transcribe every clip of a prepared dataset (results in the dataset's order).

    ``engine``: ``fast`` is ``decoding.GreedyDecoder`` (static caches, CUDA graphs),
    ``fast-compiled`` the same with the encoder compiled (long jobs on a GPU), ``generate``
    is transformers' ``generate``; ``auto`` takes the fast one where it applies (a plain or
    merged model, a known language, greedy search). ``generate_kwargs`` go to
    ``model.generate``; ``min_new_tokens``/``max_new_tokens`` (benchmarks pin both) are
    honoured by both engines. ``decoding`` (``robust_decoding.DecodingOptions``) decodes with
    its fallback and thresholds through ``generate`` instead; None keeps greedy search."""
    from tqdm.auto import tqdm

    from .decoding import decoder_for, prompt_ids, supports_fast_path

    device = next(p for p in model.parameters()).device
    n = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    durations = np.asarray(dataset.select_columns(["duration"])[:n]["duration"], dtype=np.float32)
    order = np.argsort(-durations, kind="stable")
    hyps: list[str | None] = [None] * n
    data = dataset.select_columns(["audio"]).with_format("numpy")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    # robust: a padded tensor back, since transformers 5 fails to stack a batch's outputs once
    # its clips ended at different fallback temperatures (different lengths)
    robust = {**decoding.generate_kwargs(), "return_dict_in_generate": False} if decoding else {}
    kwargs = {"max_new_tokens": max_new_tokens} | robust | (generate_kwargs or {})
    fast = engine in ("fast", "fast-compiled") or (
        engine == "auto"
        and language is not None
        and set(kwargs) <= {"max_new_tokens", "min_new_tokens"}
        and supports_fast_path(model)
    )
    autocast = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
    quiet = quiet_generate()
    with torch.inference_mode(), autocast, quiet, _decoding_context(model, processor, decoding, device):
        if fast and n:
            prompt = prompt_ids(model, processor.tokenizer, language, task)
            max_len = len(prompt) + kwargs["max_new_tokens"]
            compiled = engine == "fast-compiled"
            decoder = decoder_for(
                model, min(batch_size, n), max_len, amp or input_dtype(model), compile_encoder=compiled
            )
        for i in tqdm(range(0, n, batch_size), desc="generate", unit="batch", disable=not progress):
            idx = order[i : i + batch_size].tolist()
            features = log_mel(processor.feature_extractor, [data[j]["audio"] for j in idx], device=device)
            features = features.to(device=device, dtype=input_dtype(model))
            if fast:
                out = decoder(features, prompt, kwargs["max_new_tokens"], kwargs.get("min_new_tokens", 0))
            else:
                out = model.generate(input_features=features, language=language, task=task, **kwargs)
                out = out if torch.is_tensor(out) else out["sequences"]
            for j, text in zip(idx, processor.tokenizer.batch_decode(out, skip_special_tokens=True)):
                hyps[j] = text.strip()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    model.train(was_training)
    meta = dataset.select_columns(["id", "text"])[:n]
    return GenerationResult(meta["id"], meta["text"], hyps, seconds)


def _decoding_context(model, processor, decoding, device):
    """Seeded sampling and openai's text compression ratio while robust decoding runs."""
    if decoding is None:
        return contextlib.nullcontext()
    from .robust_decoding import decoding_session

    return decoding_session(model, processor.tokenizer, device)


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
    decoding: dict = field(default_factory=lambda: {"name": "greedy"})  # robust_decoding.DecodingOptions.describe()


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
) -> tuple[EvalSummary, Path]:
    """Measure WER/CER of base (+ adapter) on ``split`` of ``data`` (a ``DataConfig``); writes
    ``summary.json`` and ``clips.jsonl`` into ``out_dir`` (the prepared split is cached in
    ``out_dir/prepared``). Without ``adapter`` this is the zero-shot baseline. ``decoding``
    (``DecodingOptions``) replaces the default fast greedy search, whose numbers stay
    comparable with every earlier report; the summary records which one ran."""
    from .modeling import load_for_inference, pick_device
    from .prepare import prepare_split

    device = pick_device()
    loaded = load_for_inference(base, adapter, device, exact=exact, language=data.language, task=data.task)
    out = Path(out_dir)
    processor_dir = out / "processor"
    loaded.processor.save_pretrained(processor_dir)
    dataset = prepare_split(data, split, out / "prepared", str(processor_dir), progress=progress)
    warn_if_cut_short(dataset if max_samples is None else dataset[:max_samples], max_new_tokens)
    result = generate_on(
        loaded.model,
        loaded.processor,
        dataset,
        loaded.language,
        loaded.task,
        batch_size,
        max_new_tokens,
        loaded.autocast_dtype,
        max_samples,
        progress=progress,
        decoding=decoding,
    )
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
    }
    summary, clips = summarize(result, info, decoding)
    return summary, write_eval_report(out, asdict(summary), clips)
