"""Does shallow fusion with an n-gram model of the training sentences pay (issue 25, item 5)?

WER and CER of a base and its fine-tune on the demo corpus's splits, greedy and beam search,
without the language model (weight 0) and over a sweep of weights. The model is built from
the training split alone (``build-lm``'s ``text_lm.build_lm_file``); the weight is chosen on
``dev`` (unseen-style sentences, as the demo's early stopping) and reported on ``test``
(training voices, held-out sentences of the same pool) and ``unseen`` (sentences and voices
training never had). Each model loads once; each split is prepared once.

    python benchmarks/fusion_study.py --base /work/artifacts/whisper-base \
        --adapter /work/artifacts/gpu-demo-adapter --data /work/artifacts/demo-corpus-mr \
        --out benchmarks/results/fusion-demo-cpu

writes ``results.json`` (every row as it finishes, so a stopped run keeps what it measured)
and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from whisper_tune.config import DataConfig
from whisper_tune.evaluation import decode_dataset, prepared_split, summarize
from whisper_tune.inference import DecodingOptions, open_engine
from whisper_tune.processor import load_tokenizer
from whisper_tune.text_lm import build_lm_file

MAX_NEW_TOKENS = 128  # the demo's evaluation length (config.EVALUATE_MAX_NEW_TOKENS)


def options(beams: int, weight: float, bonus: float, lm: Path) -> DecodingOptions:
    plain = DecodingOptions.beam(beams) if beams > 1 else DecodingOptions.greedy()
    return plain.with_fields(lm=str(lm), lm_weight=weight, lm_length_bonus=bonus) if weight or bonus else plain


def sweep(args, name: str, adapter: str | None, lm: Path, rows: list, save) -> None:
    engine = open_engine(args.base, adapter, device=torch.device(args.device), language="mr")
    data = DataConfig(source=args.data, language="mr")
    for split in args.splits:
        dataset = prepared_split(engine.processor, data, split, Path(args.work) / split, progress=False)
        for beams in args.beams:
            for weight in args.weights:
                for bonus in args.bonuses if weight else [0.0]:
                    decoding = options(beams, weight, bonus, lm)
                    start = time.perf_counter()
                    result = decode_dataset(
                        engine, dataset, args.batch_size, MAX_NEW_TOKENS, args.max_samples, decoding=decoding
                    )
                    summary, _ = summarize(result, {}, decoding)
                    row = {
                        "model": name,
                        "split": split,
                        "beams": beams,
                        "weight": weight,
                        "bonus": bonus,
                        "wer": round(summary.wer, 2),
                        "cer": round(summary.cer, 2),
                        "n": summary.n,
                        "seconds": round(time.perf_counter() - start, 1),
                    }
                    rows.append(row)
                    save()
                    print(json.dumps(row), flush=True)


def chosen(rows: list) -> list[dict]:
    """Per model and search: the weight (and bonus) with the lowest dev WER, and weight 0."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for beams in dict.fromkeys(r["beams"] for r in rows):
            mine = [r for r in rows if r["model"] == model and r["beams"] == beams]
            dev = [r for r in mine if r["split"] == "dev"]
            if not dev:
                continue
            best = min(dev, key=lambda r: (r["wer"], r["cer"], r["weight"]))
            settings = [(0.0, 0.0)] + ([(best["weight"], best["bonus"])] if best["weight"] else [])
            for weight, bonus in settings:
                got = {r["split"]: r for r in mine if r["weight"] == weight and r["bonus"] == bonus}
                out.append({"model": model, "beams": beams, "weight": weight, "bonus": bonus, "splits": got})
    return out


def markdown(rows: list, meta: dict) -> str:
    splits = list(dict.fromkeys(r["split"] for r in rows))
    head = "| model | search | LM weight | length bonus | " + " | ".join(f"{s} WER / CER %" for s in splits) + " |"
    lines = [
        "# Shallow fusion with an n-gram model of the training sentences (issue 25, item 5)",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}; {meta['lm']}.",
        "",
        "## Every row",
        "",
        head,
        "|" + "---|" * (4 + len(splits)),
    ]
    keys = list(dict.fromkeys((r["model"], r["beams"], r["weight"], r["bonus"]) for r in rows))
    for model, beams, weight, bonus in keys:
        cells = []
        for s in splits:
            hit = [
                r
                for r in rows
                if (r["model"], r["beams"], r["weight"], r["bonus"], r["split"]) == (model, beams, weight, bonus, s)
            ]
            cells.append(f"{hit[0]['wer']:.2f} / {hit[0]['cer']:.2f}" if hit else "-")
        search = "greedy" if beams == 1 else f"beam {beams}"
        lines.append(f"| {model} | {search} | {weight:g} | {bonus:g} | " + " | ".join(cells) + " |")
    lines += ["", "## The weight chosen on dev, next to no fusion", ""]
    for c in chosen(rows):
        cells = ", ".join(f"{s} {r['wer']:.2f} / {r['cer']:.2f}" for s, r in c["splits"].items())
        search = "greedy" if c["beams"] == 1 else f"beam {c['beams']}"
        lines.append(f"- {c['model']}, {search}, weight {c['weight']:g}, bonus {c['bonus']:g}: {cells}")
    return "\n".join(lines) + "\n"


def cpu_name() -> str:
    """The CPU's model name and core count (``platform.processor()`` is empty on Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "CPU"
    return f"{name}, {os.cpu_count()} cores"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True)
    p.add_argument("--adapter", default=None, help="the fine-tune (also scored: the base alone, zero-shot)")
    p.add_argument("--data", required=True, help="the demo corpus folder (train/dev/test/unseen .tsv)")
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="/tmp/fusion-study-work", help="prepared splits are cached here")
    p.add_argument("--splits", nargs="+", default=["dev", "test", "unseen"])
    p.add_argument("--beams", nargs="+", type=int, default=[1, 5])
    p.add_argument("--weights", nargs="+", type=float, default=[0.0, 0.1, 0.2, 0.3, 0.5])
    p.add_argument("--bonuses", nargs="+", type=float, default=[0.0])
    p.add_argument("--models", nargs="+", default=["finetune", "base"], choices=("finetune", "base"))
    p.add_argument("--order", type=int, default=None, help="n-gram order (default: build-lm's)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm_path = out / "lm.json"
    order = {"order": args.order} if args.order else {}
    lm = build_lm_file(lm_path, load_tokenizer(args.base), data=DataConfig(source=args.data), split="train", **order)
    machine = torch.cuda.get_device_name(0) if args.device == "cuda" else cpu_name()
    meta = {
        "command": "python benchmarks/fusion_study.py " + " ".join(__import__("sys").argv[1:]),
        "machine": machine,
        "torch": torch.__version__,
        "lm": f"{lm.order}-gram Kneser-Ney over Whisper tokens of {lm.sentences} training sentences",
    }
    rows: list = []

    def save():
        (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1), encoding="utf-8")
        (out / "results.md").write_text(markdown(rows, meta), encoding="utf-8")

    models = {"finetune": args.adapter, "base": None}
    for name in args.models:
        if name == "finetune" and not args.adapter:
            continue
        sweep(args, name, models[name], lm_path, rows, save)
    lm_path.unlink()  # rebuilt from the corpus by the command above; not a result


if __name__ == "__main__":
    main()
