"""Short encoder windows on the CPU (issue 28 item 5): the demo recipe's training step and
evaluate's clips/s, with ``model.encoder_window`` full (30 s) and longest, side by side.

Training rows run ``whisper-tune train --config demo`` (the demo recipe: int8-wo base, q/v
LoRA r=32 in encoder and decoder, batch 4, SpecAugment) for ``--steps`` steps each, in fp32
and in bf16 autocast, the two windows alternating so that a load change on a shared machine
falls on both; s/step is the batch over run.json's steady samples/s. Evaluation rows run
``whisper-tune evaluate`` of the base model on ``--eval-samples`` test clips with
``--encoder-window`` full and longest: clips/s (the decoding alone) and WER.

    PYTHONPATH=src python benchmarks/cpu_encoder_window.py --base /work/artifacts/whisper-base \\
        --corpus /work/artifacts/demo-corpus-mr --train-prepared /tmp/prep-train \\
        --out benchmarks/results/encoder-window-cpu

``--train-prepared`` is the corpus's train split prepared once (``whisper-tune prepare
--split train``), so that no row spends its time preparing. Writes ``rows.json`` and prints
one line per row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

WINDOWS = ("full", "longest")
PRECISIONS = ("no", "bf16")  # train.mixed_precision: fp32, bf16 autocast


def cli(*args: str, log: Path) -> None:
    """Run ``whisper-tune ARGS`` in a fresh process (its own threads and memory), output to ``log``."""
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-m", "whisper_tune.cli", *args], check=True, stdout=out, stderr=out, env=env)


def train_row(args, window: str, precision: str, folder: Path) -> dict:
    cli(
        "train",
        "--config",
        "demo",
        f"model.base={args.base}",
        f"data.source={args.train_prepared}",
        f"train.output_dir={folder}",
        f"model.encoder_window={window}",
        f"train.mixed_precision='{precision}'",  # quoted: YAML reads a bare no as false
        f"train.max_steps={args.steps}",
        "eval.every=-1",
        "train.save_every=100000",
        log=folder.with_suffix(".log"),
    )
    run = json.loads((folder / "run.json").read_text())
    batch = run.get("config", {}).get("train", {}).get("batch_size", 4)
    steady = run.get("steady_samples_per_s") or run["samples_per_s"]
    return {
        "kind": "train",
        "window": window,
        "precision": "fp32" if precision == "no" else precision,
        "steps": args.steps,
        "samples_per_s": run["samples_per_s"],
        "steady_samples_per_s": steady,
        "s_per_step": round(batch / steady, 3),
        "wall_s": run["wall_s"],
    }


def eval_row(args, window: str, folder: Path) -> dict:
    cli(
        "evaluate",
        "--model",
        args.base,
        "--data",
        args.corpus,
        "--split",
        "test",
        "--max-samples",
        str(args.eval_samples),
        "--batch-size",
        "8",
        "--max-new-tokens",
        "96",
        "--encoder-window",
        window,
        "--out",
        str(folder),
        log=folder.with_suffix(".log"),
    )
    s = json.loads((folder / "summary.json").read_text())
    return {
        "kind": "evaluate",
        "window": window,
        "clips": s["n"],
        "clips_per_s": round(s["clips_per_s"], 3),
        "wer": round(s["wer"], 2),
        "cer": round(s["cer"], 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True)
    p.add_argument("--corpus", required=True, help="the demo corpus folder (test split for evaluation)")
    p.add_argument("--train-prepared", required=True, help="its train split, prepared")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--eval-samples", type=int, default=32)
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    args = p.parse_args()
    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    start = time.time()
    for precision in args.precisions.split(","):
        for window in WINDOWS:
            rows.append(train_row(args, window, precision, work / f"train-{precision}-{window}"))
            print(json.dumps(rows[-1]), flush=True)
    for window in WINDOWS:
        rows.append(eval_row(args, window, work / f"eval-{window}"))
        print(json.dumps(rows[-1]), flush=True)
    import torch
    import transformers

    machine = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_average_after": os.getloadavg(),
        "wall_s": round(time.time() - start, 1),
    }
    (out / "rows.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(json.dumps(machine))


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
