#!/usr/bin/env bash
# Issue 25 item 5 on the GPU machine: shallow fusion with an n-gram model of the training
# sentences, Whisper base (real weights) and the GPU demo adapter, greedy and beam 5 over a
# sweep of weights on dev, test and unseen (benchmarks/fusion_study.py).
#
# What travels: gpu_card.sh's .gpuw/ .gpuw2/ .gpuw3/ (the weights in three pieces, the wheels)
# and .gpuw4/corpus/mr (the demo corpus), plus .gpuw5/adapter (the GPU demo adapter folder);
# each call starts with `mkdir -p /tmp/w && cp -r .gpuw*/. /tmp/w/`.
# There:  bash benchmarks/gpu_fusion.sh [fusion_study.py arguments, e.g. --weights 0 0.2 0.4]
set -euo pipefail
OUT=${OUT:-/tmp/out}
W=/tmp/w
if [ ! -f /tmp/whisper-base/model.safetensors ]; then
  mkdir -p /tmp/whisper-base
  cp "$W"/w/*.json /tmp/whisper-base/
  cat "$W"/wpart.00 "$W"/wpart.01 "$W"/wpart.02 > /tmp/whisper-base/model.safetensors
fi
[ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$W"/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src TRANSFORMERS_VERBOSITY=error WHISPER_TUNE_CACHE=$W/cache
mkdir -p "$OUT"
python3 benchmarks/fusion_study.py --base /tmp/whisper-base --adapter "$W/adapter" --data "$W/corpus/mr" \
  --out "$OUT/fusion-demo-gpu" --work /tmp/fusion-work "$@"
