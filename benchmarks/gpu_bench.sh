#!/usr/bin/env bash
# The speed tables of benchmarks/results/ on the GPU machine: `whisper-tune bench train` and
# `whisper-tune bench transcribe` on the large-v2 architecture (random weights), each table
# in one process. On your own GPU, the two `whisper-tune bench` lines are all you need.
#
# Here:    bash ../shared/gpu/wheels.sh .whl     (bitsandbytes, datasets, jiwer, soundfile)
# There:   bash benchmarks/gpu_bench.sh train|transcribe   (device run, carry .whl)
set -euo pipefail
OUT=${OUT:-/tmp/out}
WHAT=${1:-train}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src
mkdir -p "$OUT/results"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ "$WHAT" = train ]; then
  python3 -m whisper_tune.cli bench train --arch large-v2 --out "$OUT/results"
else
  python3 -m whisper_tune.cli bench transcribe --arch large-v2 --clips 128 --out "$OUT/results"
fi 2>&1 | grep -v -i warn | grep -v "it/s\]"
