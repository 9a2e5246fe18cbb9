"""The study of issue 24 item 4: each switch of "training that preserves" on and off, with
every line of the report card, on the GPU machine (Whisper base, real weights).

Each row is the GPU demo (``demo.GPU_OVERRIDES`` on ``recipes/demo.yaml``) with every
preserving switch off (the defaults turn some on since the fourth set), plus its switches;
early stopping and the best checkpoint use the dev split (sentences not in training); the
run writes its report card at the end (``eval.card``, on by default on a
GPU) on the dev split's clips; test and unseen are scored with ``evaluate``. Rows run side
by side on one card (Whisper base leaves most of it idle), so wall times are not speeds.

    python3 benchmarks/gpu_card_study.py --base /tmp/whisper-base --data /tmp/corpus/mr --out $OUT/card-study \\
        --parallel 6 [--only NAME ...] [--seeds 0 1 2]

Writes card-study.md (one table: the settings against test/unseen WER and each card line)
and card-study.json (every row with its whole card).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gpu_study import cli, evaluate, slug, train_row  # noqa: E402 - the study scripts share their runner

from whisper_tune.demo import GPU_OVERRIDES  # noqa: E402

EMPTY_JOINED = [
    "preserve.nonspeech_share=0.1",
    "preserve.nonspeech_target=empty",
    "preserve.timestamp_share=0.5",
    "preserve.timestamp_clips=4",
]
ALL_OFF = ["preserve.nonspeech_share=0", "preserve.timestamp_share=0", "preserve.prompt_share=0"]  # before each row
REPLAY = ["data.replay.source={replay}", "data.replay.language=en", "data.replay.share=0.2"]
ROWS = {
    "switches off (the GPU demo)": [],
    "non-speech 10 %": ["preserve.nonspeech_share=0.1"],
    "timestamps 50 %": ["preserve.timestamp_share=0.5"],
    "prompts 20 %": ["preserve.prompt_share=0.2"],
    "all three": ["preserve.nonspeech_share=0.1", "preserve.timestamp_share=0.5", "preserve.prompt_share=0.2"],
    # issue 25 item 3: against learning the training sentences by heart
    "label smoothing 0.1": ["train.label_smoothing=0.1"],
    "decoder rank 8": ["lora.decoder_r=8"],
    "average of the last 3 checkpoints": ["train.save_every=50", "train.keep_last=3", "train.average_last=3"],
    "weight decay 0.05, dropout 0.1": ["train.weight_decay=0.05", "lora.dropout=0.1"],
    # the candidate defaults of round three's second study: the switches that kept dev WER, together
    "non-speech 10 %, timestamps 50 %": ["preserve.nonspeech_share=0.1", "preserve.timestamp_share=0.5"],
    "all three, label smoothing 0.1": [
        "preserve.nonspeech_share=0.1",
        "preserve.timestamp_share=0.5",
        "preserve.prompt_share=0.2",
        "train.label_smoothing=0.1",
    ],
    # round three's third study: the card showed text on every non-speech clip under the forced
    # <|mr|><|transcribe|> prefix (the <|nospeech|> target sits before it) and long-form lost to
    # one-segment timestamp targets; these rows train the empty target and joined timestamp samples
    "non-speech 10 % (empty), joined timestamps 50 %": EMPTY_JOINED,
    "the same, prompts 20 %, label smoothing 0.1": [
        *EMPTY_JOINED,
        "preserve.prompt_share=0.2",
        "train.label_smoothing=0.1",
    ],
    # round three's fourth study: half of the empty non-speech targets in the time-stamp form (transcribe's
    # decoding), and English replay ({replay}: --replay, a make-demo-data --language en corpus) against forgetting
    "the same, English replay 20 %": [
        *EMPTY_JOINED,
        *REPLAY,
    ],
    "the same, English replay 20 %, prompts 20 %, label smoothing 0.1": [
        *EMPTY_JOINED,
        *REPLAY,
        "preserve.prompt_share=0.2",
        "train.label_smoothing=0.1",
    ],
    # issue 28 item 5: short encoder windows in training (the card decodes in 30 s windows, as serving does)
    "short windows": ["model.encoder_window=longest"],
    "non-speech 10 %, timestamps 50 %, short windows": [
        "preserve.nonspeech_share=0.1",
        "preserve.timestamp_share=0.5",
        "model.encoder_window=longest",
    ],
}
SPLITS = ("test", "unseen")
CARD_COLUMNS = (  # card line name (report_card.LINES) -> short column name
    ("target WER, normalized", "target WER"),
    ("non-speech given text", "non-speech text"),
    ("repetition loops", "loops"),
    ("long-form WER, normalized", "long-form WER"),
    ("long-form timestamps sane", "timestamps sane"),
    ("English WER, normalized", "English WER"),
    ("language-ID accuracy", "lang-ID"),
)


def run_row(name: str, overrides: list[str], seed: int, base: str, data: str, out: Path, card: bool = True) -> dict:
    """Train one row; with ``card`` its card at the end of training and test/unseen scores, else
    only the training (``--phase train``: :func:`score_row` adds the rest in a later call)."""
    start = time.time()
    folder, log = train_row(
        f"{name}-s{seed}", base, data, out, f"train.seed={seed}", f"eval.card={str(card).lower()}", *GPU_OVERRIDES,
        *ALL_OFF, *overrides, eval_split="dev",
    )  # fmt: skip
    record = json.loads((folder / "run" / "run.json").read_text())
    adapter = folder / "run" / ("best" if (folder / "run" / "best").is_dir() else "adapter")
    row = {
        "name": name,
        "seed": seed,
        "overrides": overrides,
        "steps": record["steps"],
        "best_step": (record.get("best") or {}).get("step"),
        "best_is_base": record.get("best_is_base", False),
        "train_s": round(time.time() - start),
        "adapter": str(adapter),
    }
    (folder / "row.json").write_text(json.dumps(row, indent=2))
    if not card:
        return row
    row["card"] = json.loads((folder / "run" / "card.json").read_text())
    return row | {s: evaluate(["--adapter", str(adapter)], data, s, folder / f"eval-{s}", log) for s in SPLITS}


def score_row(folder: Path, data: str) -> dict:
    """``--phase score``: a trained row's card on the unseen split (``evaluate --card``: the
    unseen WER comes with it) and its test score."""
    row = json.loads((folder / "row.json").read_text())
    log = folder.parent / f"{folder.name}.log"
    start = time.time()
    cli("evaluate", "--adapter", row["adapter"], "--data", data, "--split", "unseen", "--card", "--max-new-tokens",
        "96", "--out", str(folder / "eval-unseen"), log=log)  # fmt: skip
    row["card_s"] = round(time.time() - start, 1)  # side by side with the other rows: not the card's cost alone
    s = json.loads((folder / "eval-unseen" / "summary.json").read_text())
    row["unseen"] = {k: round(s[k], 2) for k in ("wer", "cer")} | {"n": s["n"]}
    row["card"] = json.loads((folder / "eval-unseen" / "card.json").read_text())
    row["test"] = evaluate(["--adapter", row["adapter"]], data, "test", folder / "eval-test", log)
    return row


def _card_value(card: dict, line: str, column: str) -> float | None:
    for entry in card["lines"]:
        if entry["name"] == line:
            return entry[column]
    return None


def _cell(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(rows: list[dict]) -> str:
    """One line per setting (mean ± spread over its seeds), the base's card column first."""
    done = [r for r in rows if "error" not in r]
    head = ["setting", "seeds", "test WER", "test CER", "unseen WER", "unseen CER"] + [c for _, c in CARD_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if done:
        card = done[0]["card"]
        base = [_cell([_card_value(card, line, "base")]) for line, _ in CARD_COLUMNS]
        lines.append("| base (zero-shot), card column | | | | | | " + " | ".join(base) + " |")
    for name in dict.fromkeys(r["name"] for r in done):
        group = [r for r in done if r["name"] == name]
        cells = [
            _cell([r[s][k] for r in group])
            for s, k in (("test", "wer"), ("test", "cer"), ("unseen", "wer"), ("unseen", "cer"))
        ]
        cells += [_cell([_card_value(r["card"], line, "tuned") for r in group]) for line, _ in CARD_COLUMNS]
        lines.append(f"| {name} | {len(group)} | " + " | ".join(cells) + " |")
    lines += [f"| {r['name']} (seed {r['seed']}) | failed: {r['error']} |" for r in rows if "error" in r]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--parallel", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=None, help="these rows (default: all)")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument(
        "--phase",
        choices=("all", "train", "score"),
        default="all",
        help="train: the rows' trainings only (no card, no scores); score: the card and scores of rows trained "
        "before (the device's calls are 10 minutes at most); all: both in one go",
    )
    ap.add_argument(
        "--extra", nargs="*", default=[], help="overrides appended to every row (a dry run: train.max_steps=2)"
    )
    ap.add_argument("--replay", default=None, help="English corpus of the replay rows (make-demo-data --language en)")
    args = ap.parse_args()
    needs = [n for n in (args.only or list(ROWS)) if any("{replay}" in o for o in ROWS[n])]
    if needs and not args.replay:
        ap.error(f"rows {needs} replay English clips: give --replay CORPUS (whisper-tune make-demo-data --language en)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(name, seed) for name in (args.only or list(ROWS)) for seed in args.seeds]
    rows: list[dict] = []

    def one(job: tuple[str, int]) -> dict:
        name, seed = job
        try:
            if args.phase == "score":
                return score_row(out / slug(f"{name}-s{seed}"), args.data)
            overrides = [o.replace("{replay}", str(args.replay)) for o in ROWS[name] + args.extra]
            return run_row(name, overrides, seed, args.base, args.data, out, args.phase == "all")
        except Exception as e:  # noqa: BLE001 - one failed row must not lose the others
            return {"name": name, "seed": seed, "error": str(e)}

    zero_file = out / "zero-shot.json"
    if zero_file.exists():
        zero = json.loads(zero_file.read_text())
    else:
        base = ["--model", args.base]
        zero = {s: evaluate(base, args.data, s, out / f"zero-shot-{s}", out / "zero-shot.log") for s in SPLITS}
        zero_file.write_text(json.dumps(zero, indent=2))
    print(f"zero-shot: {zero}", flush=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        for row in pool.map(one, jobs):
            rows.append(row)
            (out / "card-study.json").write_text(json.dumps(rows, indent=2))
            if args.phase != "train":
                (out / "card-study.md").write_text(zero_shot_line(zero) + table(rows))
            print(f"{row['name']} (seed {row['seed']}): {'failed' if 'error' in row else 'done'}", flush=True)
    timed = next((r for r in rows if "error" not in r), None)
    if timed and args.phase != "train":  # the card's own cost, alone on the card: evaluate --card on the dev split
        folder = out / "timed-card"
        start = time.time()
        cli("evaluate", "--adapter", timed["adapter"], "--data", args.data, "--split", "dev", "--card",
            "--out", str(folder), log=out / "timed-card.log")  # fmt: skip
        spent = {"adapter": timed["adapter"], "evaluate_and_card_s": round(time.time() - start, 1)}
        (out / "timed-card.json").write_text(json.dumps(spent, indent=2))
        print(f"evaluate --card alone: {spent}", flush=True)
    if args.phase != "train":
        print(zero_shot_line(zero) + table(rows))


def zero_shot_line(zero: dict) -> str:
    t, u = zero["test"], zero["unseen"]
    scores = f"test {t['wer']:.1f} / {t['cer']:.1f}, unseen {u['wer']:.1f} / {u['cer']:.1f}"
    return f"zero-shot (the base): {scores} (WER / CER %)\n\n"


if __name__ == "__main__":
    main()
