#!/usr/bin/env bash
# The speed tables of benchmarks/results/ on the GPU machine: `whisper-tune bench train` and
# `whisper-tune bench transcribe` (random weights), each table in one call, for each
# architecture in ARCHS. On your own GPU, the `whisper-tune bench` lines are all you need.
#
# Here:    bash ../shared/gpu/wheels.sh .whl     (bitsandbytes, datasets, jiwer, soundfile)
# There:   ARCHS="large-v2 large-v3 large-v3-turbo" bash benchmarks/gpu_bench.sh train|transcribe
#          (device run, carry .whl); TRAIN_ROWS / TRANSCRIBE_ROWS override the default rows
set -euo pipefail
OUT=${OUT:-/tmp/out}
WHAT=${1:-train}
ARCHS=${ARCHS:-large-v2}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src
mkdir -p "$OUT/results"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for arch in $ARCHS; do
  if [ "$WHAT" = train ]; then
    python3 -m whisper_tune.cli bench train --arch "$arch" --steps "${STEPS:-4}" --out "$OUT/results" \
      ${TRAIN_ROWS:+--rows $TRAIN_ROWS}
  else
    python3 -m whisper_tune.cli bench transcribe --arch "$arch" --clips 128 --out "$OUT/results" \
      ${TRANSCRIBE_ROWS:+--rows $TRANSCRIBE_ROWS}
  fi 2>&1 | grep -v -i warn | grep -v "it/s\]"
done
