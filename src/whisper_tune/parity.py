"""Did the conversion keep the accuracy? A WER parity check of an export against its source.

``export-ct2 --check DATA`` and ``export-ggml --check DATA`` score the export with the
runtime that will run it (faster-whisper for CTranslate2, whisper.cpp for GGML) and the
merged source model with the code ``whisper-tune evaluate`` uses, on the same prepared
clips, with the same references and normalizers, and compare the two.

Each runtime decodes the audio array itself through its own transcribe call: the front ends
differ (faster-whisper and whisper.cpp compute the log-mel of the unpadded audio, we pad it
to 30 s), and that difference is part of what a user of the export gets. The decoding rules
are made the same: greedy, language and task forced, no timestamps, temperature 0 without
fallback, no "no speech" skipping (``evaluate`` has none), the same cap on new tokens, and
non-speech tokens suppressed where the source's generation_config suppresses tokens.
The cap defaults to what whisper.cpp allows per 30 s window (``n_text_ctx / 2 - 4`` = 220),
since whisper.cpp cannot go further and a longer cap on one side only would be no parity.

The verdict is on the orthographic WER, the first figure ``evaluate`` prints: the export
fails when it is worse than the source by more than ``max_wer_increase`` points.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UserError
from .inference.engine import check_runtime

PARITY_FAILED = 3  # the exit code of an export that lost accuracy (2 stays "the user's input is wrong")
MAX_WER_INCREASE = 1.0  # points of WER an export may lose before the check fails
RUNTIMES = {"ct2": "faster-whisper", "ggml": "whisper.cpp"}
METRICS = ("wer", "cer", "normalized_wer", "normalized_cer")
CARD_BEGIN, CARD_END = "<!-- whisper-tune parity -->", "<!-- /whisper-tune parity -->"


@dataclass
class ParityResult:
    """Both models' scores on the same clips, the difference (export minus source) and the verdict."""

    kind: str  # ct2 or ggml
    export: str
    runtime: str  # faster-whisper (compute type) or whisper.cpp (ggml type)
    source_model: str
    data: str
    split: str
    language: str
    task: str
    n: int
    max_new_tokens: int
    max_wer_increase: float
    source: dict  # wer, cer, normalized_wer, normalized_cer (percent), clips_per_s, seconds, flagged
    exported: dict
    difference: dict  # export minus source, in points, per metric
    verdict: str  # "pass" or "fail"
    clips: list[dict] = field(default_factory=list, repr=False)  # id, reference, source, export

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def failure_line(self) -> str:
        """The one line a failed check ends with."""
        return (
            f"the {self.kind} export lost accuracy: WER {self.exported['wer']:.2f} % against "
            f"{self.source['wer']:.2f} % for the source on {self.n} clips of {self.split} "
            f"({self.difference['wer']:+.2f} points, more than --max-wer-increase {self.max_wer_increase:g})"
        )


# ---- scoring ---------------------------------------------------------------------------


def window_tokens(source_model: str | Path) -> int:
    """New tokens whisper.cpp decodes at most per 30 s window: half the decoder's context less
    the four prompt tokens (220 for every Whisper)."""
    config = json.loads((Path(source_model) / "config.json").read_text(encoding="utf-8"))
    return config.get("max_target_positions", 448) // 2 - 4


def check_export(
    kind: str,
    export_path: str | Path,
    source_model: str | Path,
    data,
    split: str = "test",
    max_wer_increase: float = MAX_WER_INCREASE,
    max_new_tokens: int | None = None,
    max_samples: int | None = None,
    progress: bool = False,
) -> ParityResult:
    """Score ``export_path`` on its runtime and ``source_model`` (a transformers folder) on
    transformers over the same clips of ``split`` of ``data`` (a ``DataConfig``), write the
    report beside the export (see :func:`write_report`) and return the result."""
    from .evaluation import summarize

    if kind not in RUNTIMES:
        raise UserError(f"unknown export kind {kind!r}: use {' or '.join(RUNTIMES)}")
    export_path = Path(export_path)
    cap = window_tokens(source_model)
    max_new_tokens = max_new_tokens or cap
    if not 0 < max_new_tokens <= cap:
        raise UserError(f"--max-new-tokens must be 1 to {cap} (whisper.cpp's cap per 30 s window)")
    check_runtime(kind, export_path)  # a missing runtime is refused before any scoring
    with tempfile.TemporaryDirectory() as tmp:
        dataset, how, source_run = _score_source(
            source_model, data, split, Path(tmp), (max_new_tokens, cap), max_samples, progress
        )
        export_run, label = _score_export(kind, export_path, dataset, len(source_run.ids), how)
    source_summary, _ = summarize(source_run)
    export_summary, _ = summarize(export_run)
    source, exported = _scores(source_summary), _scores(export_summary)
    difference = {m: exported[m] - source[m] for m in METRICS}
    result = ParityResult(
        kind=kind,
        export=str(export_path),
        runtime=label,
        source_model=str(source_model),
        data=data.source,
        split=split,
        language=how.language,
        task=how.task,
        n=source_summary.n,
        max_new_tokens=max_new_tokens,
        max_wer_increase=max_wer_increase,
        source=source,
        exported=exported,
        difference=difference,
        verdict="pass" if difference["wer"] <= max_wer_increase else "fail",
        clips=[
            {"id": i, "reference": r, "source": s, "export": e}
            for i, r, s, e in zip(source_run.ids, source_run.references, source_run.hypotheses, export_run.hypotheses)
        ],
    )
    write_report(result)
    return result


def _scores(summary) -> dict:
    keep = (*METRICS, "n", "seconds", "clips_per_s", "flagged")
    return {k: v for k, v in asdict(summary).items() if k in keep}


def _score_source(source_model, data, split: str, tmp: Path, tokens: tuple[int, int], max_samples, progress: bool):
    """The source as ``evaluate`` scores a merged model (same engine, decoder and batch), the
    prepared clips it was scored on, and the decoding the export must use (``tokens``: the
    cap on new tokens and whisper.cpp's window). The model is released on return, so that a
    large source and its export are not in memory together."""
    from .config import EvalSettings
    from .evaluation import score_split
    from .inference import open_engine

    engine = open_engine(str(source_model), language=data.language, task=data.task)
    dataset, result = score_split(engine, data, split, tmp, EvalSettings().batch_size, tokens[0], max_samples, progress)
    suppress = bool(getattr(engine.model.generation_config, "suppress_tokens", None))
    return dataset, Decoding(engine.language, engine.task, *tokens, suppress), result


def _score_export(kind: str, export_path: Path, dataset, n: int, how: Decoding):
    """The export on its runtime over the first ``n`` clips the source was scored on, with
    the same decoding rules; (GenerationResult, a label naming the runtime)."""
    from .evaluation import decode_dataset
    from .inference import open_engine

    engine = open_engine(
        export_path, kind=kind, language=how.language, task=how.task, suppress=how.suppress, window=how.window
    )
    # one call for all clips: the runtimes decode clip by clip, and whisper.cpp loads its model per call
    result = decode_dataset(engine, dataset, batch_size=max(n, 1), max_new_tokens=how.max_new_tokens, max_samples=n)
    return result, engine.describe()


@dataclass(frozen=True)
class Decoding:
    """What every runtime is told: the same for the source and the export."""

    language: str
    task: str
    max_new_tokens: int
    window: int  # whisper.cpp's own cap per window (see window_tokens)
    suppress: bool  # suppress non-speech tokens, as the source's generation_config does


# ---- reports ---------------------------------------------------------------------------


def report_path(result: ParityResult) -> Path:
    """parity.json in a CTranslate2 folder; FILE.parity.json beside a ggml file."""
    export = Path(result.export)
    return export / "parity.json" if result.kind == "ct2" else export.with_name(export.name + ".parity.json")


def write_report(result: ParityResult) -> Path:
    """The JSON report, and for a CTranslate2 folder the card section in its README.md."""
    out = report_path(result)
    out.write_text(json.dumps(asdict(result), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    if result.kind == "ct2":
        _update_card(Path(result.export) / "README.md", card_section(result))
    return out


def card_section(result: ParityResult) -> str:
    """A model-card section: both models' rates on the same clips and the verdict."""
    rows = [
        ("source (transformers)", result.source),
        (f"this export ({result.runtime})", result.exported),
    ]
    lines = [
        CARD_BEGIN,
        "## Parity with the source model",
        "",
        f"`{result.source_model}` against this export on {result.n} clips of `{result.split}` of `{result.data}` "
        f"(`{result.language}`, {result.task}; greedy, no timestamps, at most {result.max_new_tokens} new tokens).",
        "",
        "| model | WER (%) | CER (%) | normalized WER (%) | normalized CER (%) | clips/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in rows:
        lines.append(f"| {name} | " + " | ".join(f"{s[m]:.2f}" for m in METRICS) + f" | {s['clips_per_s']:.2f} |")
    lines.append("| difference | " + " | ".join(f"{result.difference[m]:+.2f}" for m in METRICS) + " | |")
    lines += [
        "",
        f"Verdict: **{result.verdict}** (the export may lose at most {result.max_wer_increase:g} WER points).",
        CARD_END,
        "",
    ]
    return "\n".join(lines)


def _update_card(readme: Path, section: str) -> None:
    """Append the section, or replace the one an earlier check wrote."""
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if CARD_BEGIN in text and CARD_END in text:
        head, rest = text.split(CARD_BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(CARD_END, 1)[1]
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + section
    readme.write_text(text, encoding="utf-8")


# ---- the check as the export commands run it ----------------------------------------


@dataclass(frozen=True)
class CheckPlan:
    """A parity check as the command line asked for it, checked before the conversion."""

    data: object  # DataConfig; its language None means the source's
    split: str
    max_wer_increase: float
    max_new_tokens: int | None
    max_samples: int | None


def source_language(model: str, adapter: str | None) -> str:
    """The language the model was tuned for: the adapter's, else the model folder's
    generation_config, else DataConfig's default."""
    from .config import DataConfig

    language = None
    if adapter:
        from .run import AdapterMeta

        language = AdapterMeta.read(adapter).language
    elif (Path(model) / "generation_config.json").is_file():
        config = json.loads((Path(model) / "generation_config.json").read_text(encoding="utf-8"))
        language = config.get("language")
    return (language or DataConfig.language).strip("<|>")


def run_check(plan: CheckPlan, kind: str, export_path: Path, source_model: Path) -> int:
    """Run the check, print both models' rates and the difference; 0, or PARITY_FAILED with one
    line on stderr saying by how much the export is worse."""
    result = check_export(
        kind,
        export_path,
        source_model,
        plan.data,
        plan.split,
        max_wer_increase=plan.max_wer_increase,
        max_new_tokens=plan.max_new_tokens,
        max_samples=plan.max_samples,
        progress=True,
    )
    print(f"parity on {result.n} clips of {result.split} ({result.language}):")
    for name, s in (("source", result.source), ("export", result.exported)):
        print(
            f"  {name}  WER {s['wer']:6.2f} %  CER {s['cer']:6.2f} %  (normalized: WER {s['normalized_wer']:6.2f} %, "
            f"CER {s['normalized_cer']:6.2f} %)  {s['clips_per_s']:.2f} clips/s"
        )
    d = result.difference
    print(
        f"  diff    WER {d['wer']:+6.2f}    CER {d['cer']:+6.2f}    (normalized: WER {d['normalized_wer']:+6.2f}, "
        f"CER {d['normalized_cer']:+6.2f});  export on {result.runtime}"
    )
    print(f"report: {report_path(result)}")
    if result.passed:
        return 0
    print(f"whisper-tune: error: {result.failure_line()}", file=sys.stderr)
    return PARITY_FAILED
