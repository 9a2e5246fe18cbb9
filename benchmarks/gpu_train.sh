#!/usr/bin/env bash
# Training on the GPU machine: the large-v2 step benchmark per mode, and an end-to-end
# `whisper-tune train` (int8, CUDA) on the demo corpus with a base-sized random model, so
# the CUDA path (autocast, int8 on the GPU, WER while training) runs for real.
#
# Here:    bash ../shared/gpu/wheels.sh .whl && whisper-tune make-demo-data --out demo-output/corpus
# There:   bash benchmarks/gpu_train.sh   (device run, carry .whl and demo-output/corpus)
set -euo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src
mkdir -p "$OUT/results"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/train_step.py --arch large-v2 --modes int8 nf4 none --batch 8 --steps 4 --out "$OUT/results" \
  2>&1 | grep -v -i warn
python3 - <<'PY'
import sys
sys.path.insert(0, "benchmarks")
from pathlib import Path
from train_step import save_random
from whisper_tune.processor import build_processor
save_random("base", Path("/tmp/base-random"))
build_processor("/tmp/base-random")
PY
python3 -m whisper_tune.cli train --config recipes/demo.yaml model.base=/tmp/base-random \
  data.source=demo-output/corpus/mr train.output_dir=/tmp/gpu-run train.max_steps=40 train.num_workers=4 \
  eval.every=20 eval.max_samples=25 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" | tail -8
cp /tmp/gpu-run/run.json "$OUT/results/gpu-train-run.json"
cp /tmp/gpu-run/metrics.jsonl "$OUT/results/gpu-train-metrics.jsonl"
