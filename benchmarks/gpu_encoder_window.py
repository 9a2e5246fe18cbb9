"""Issue 28 item 5 on the GPU machine: short encoder windows (``model.encoder_window:
longest``) against 30 s windows, on speed and on every line of the report card (Whisper
base, real weights, the GPU demo's settings).

Each row is the GPU demo (``demo.GPU_OVERRIDES`` on ``recipes/demo.yaml``, early stopping
on the dev split) with the window switch; rows run one after another (their samples/s are
speeds: steady samples/s from run.json). The run writes its report card (``eval.card``,
30 s windows, as ``transcribe`` and ``serve`` decode: non-speech, long-form, time stamps,
English); test and unseen are scored with ``evaluate`` in both windows, with clips/s.

    python3 benchmarks/gpu_encoder_window.py --base /tmp/whisper-base --data /tmp/w/corpus/mr \\
        --out $OUT/encoder-window [--seeds 0 1] [--extra train.max_steps=2]

Writes encoder-window.md (the table) and encoder-window.json (every row with its card).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gpu_card_study import CARD_COLUMNS, _card_value, _cell  # noqa: E402 - the studies share their table parts
from gpu_study import evaluate, train_row  # noqa: E402

from whisper_tune.demo import GPU_OVERRIDES  # noqa: E402

ROWS = {
    "30 s windows (the GPU demo)": ["model.encoder_window=full"],
    "short windows": ["model.encoder_window=longest"],
}
WINDOWS = ("full", "longest")  # evaluate --encoder-window
SPLITS = ("test", "unseen")


def scored(model_args: list[str], data: str, split: str, window: str, out: Path, log: Path, samples=None) -> dict:
    """WER, CER and clips/s of ``evaluate`` on ``split`` in ``window`` (``samples``: the first clips only)."""
    folder = out / f"eval-{split}-{window}"
    limit = ["--max-samples", str(samples)] if samples else []
    scores = evaluate([*model_args, "--encoder-window", window, *limit], data, split, folder, log)
    summary = json.loads((folder / "summary.json").read_text())
    return scores | {"clips_per_s": round(summary["clips_per_s"], 2)}


def run_row(name: str, overrides: list[str], seed: int, args) -> dict:
    start = time.time()
    folder, log = train_row(
        f"{name}-s{seed}", args.base, args.data, Path(args.out), f"train.seed={seed}", "eval.card=true",
        *GPU_OVERRIDES, *overrides, *args.extra, eval_split="dev",
    )  # fmt: skip
    run = folder / "run"
    record = json.loads((run / "run.json").read_text())
    adapter = run / ("best" if (run / "best").is_dir() else "adapter")
    model_args = ["--adapter", str(adapter)]
    return {
        "name": name,
        "seed": seed,
        "overrides": overrides,
        "steps": record["steps"],
        "samples_per_s": record["samples_per_s"],
        "steady_samples_per_s": record.get("steady_samples_per_s"),
        "train_wall_s": record["wall_s"],
        "best_step": (record.get("best") or {}).get("step"),
        "card": json.loads((run / "card.json").read_text()),
        "adapter": str(adapter),
        "eval": {
            f"{s}/{w}": scored(model_args, args.data, s, w, folder, log, args.eval_samples)
            for s in SPLITS
            for w in WINDOWS
        },
        "wall_s": round(time.time() - start),
    }


def table(rows: list[dict], zero: dict) -> str:
    """One line per setting (mean ± spread over its seeds)."""
    done = [r for r in rows if "error" not in r]
    evals = [f"{s}/{w}" for s in SPLITS for w in WINDOWS]
    head = ["setting", "seeds", "steady samples/s", "train min"]
    head += [f"{e} WER / CER" for e in evals] + ["test clips/s full / longest"] + [c for _, c in CARD_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    zero_cells = [f"{zero[e]['wer']:.1f} / {zero[e]['cer']:.1f}" for e in evals]
    clips = f"{zero['test/full']['clips_per_s']:.1f} / {zero['test/longest']['clips_per_s']:.1f}"
    base_card = [_cell([_card_value(done[0]["card"], line, "base")]) for line, _ in CARD_COLUMNS] if done else []
    lines.append("| base (zero-shot) | | | | " + " | ".join([*zero_cells, clips, *base_card]) + " |")
    for name in dict.fromkeys(r["name"] for r in done):
        group = [r for r in done if r["name"] == name]
        cells = [_cell([r["steady_samples_per_s"] for r in group]), _cell([r["train_wall_s"] / 60 for r in group])]
        cells += [
            f"{_cell([r['eval'][e]['wer'] for r in group])} / {_cell([r['eval'][e]['cer'] for r in group])}"
            for e in evals
        ]
        cells.append(" / ".join(_cell([r["eval"][f"test/{w}"]["clips_per_s"] for r in group]) for w in WINDOWS))
        cells += [_cell([_card_value(r["card"], line, "tuned") for r in group]) for line, _ in CARD_COLUMNS]
        lines.append(f"| {name} | {len(group)} | " + " | ".join(cells) + " |")
    lines += [f"| {r['name']} (seed {r['seed']}) | failed: {r['error']} |" for r in rows if "error" in r]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", nargs="*", default=None, help="these rows (default: all)")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--eval-samples", type=int, default=None, help="clips per evaluation (default: all)")
    ap.add_argument("--extra", nargs="*", default=[], help="overrides for every row (a dry run: train.max_steps=2)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = ["--model", args.base]
    zero = {
        f"{s}/{w}": scored(base, args.data, s, w, out / "zero-shot", out / "zero-shot.log", args.eval_samples)
        for s in SPLITS
        for w in WINDOWS
    }
    print(f"zero-shot: {zero}", flush=True)
    rows: list[dict] = []
    for seed in args.seeds:  # seed by seed, the windows side by side: a slower machine hour falls on both
        for name in args.only or list(ROWS):
            try:
                rows.append(run_row(name, ROWS[name], seed, args))
            except Exception as e:  # noqa: BLE001 - one failed row must not lose the others
                rows.append({"name": name, "seed": seed, "error": str(e)})
            (out / "encoder-window.json").write_text(json.dumps({"zero_shot": zero, "rows": rows}, indent=2))
            (out / "encoder-window.md").write_text(table(rows, zero))
            print(
                f"{name} (seed {seed}): {'failed: ' + rows[-1]['error'] if 'error' in rows[-1] else 'done'}", flush=True
            )
    print(table(rows, zero))


if __name__ == "__main__":
    main()
