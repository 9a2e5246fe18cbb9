#!/usr/bin/env bash
# Does the training loop keep the GPU busy? For each architecture (random weights: speed
# does not depend on them), in one process run: `whisper-tune bench train` samples/s of
# each row (a ready batch on the GPU, the optimizer step alone) next to `whisper-tune
# train`'s steady samples/s (run.json) for the same row on the demo corpus: the same
# reference-recipe LoRA (r=32 on q/v), optimizer, quantization, batch and checkpointing,
# augmentation off as in that recipe. Each code tree in SRCS trains in turn (e.g. main's
# and a branch's), so before and after come from the same machine and the same call.
#
#   Here:  whisper-tune make-demo-data DIR (needs espeak-ng), copy DIR/mr to the machine
#   There: CORPUS=/path/to/mr SRCS="after=$PWD/src" bash benchmarks/gpu_loop.sh
#
# Settings (environment):
#   CORPUS        the demo corpus's mr/ folder (Common Voice layout)          (required)
#   SRCS          NAME=SRC_FOLDER ... code trees to train with                 (default "after=$PWD/src")
#   ARCHS         architectures                                               (default "base large-v3-turbo")
#   ROWS          bench rows QUANTIZATION/BATCH/CHECKPOINTING                 (default "none/8/0 none/32/0")
#   TRAIN_STEPS   optimizer steps per training run                            (default 60)
#   TRAIN_STEPS_<ARCH>  the same for one architecture, - written _ (TRAIN_STEPS_large_v3_turbo=40)
#   BENCH_STEPS   timed steps per bench row                                   (default 10)
#   WORKERS       train.num_workers                                           (default 4)
#   OUT           results go to $OUT/loop/                                    (default /tmp/out)
#   PY            the Python to run                                           (default python3)
# The bench and the corpus preparation run with the first tree of SRCS; every tree trains
# from the same random checkpoint and the same prepared split.
set -euo pipefail
: "${CORPUS:?set CORPUS to the demo corpus mr/ folder}"
SRCS=${SRCS:-after=$PWD/src}
ARCHS=${ARCHS:-base large-v3-turbo}
ROWS=${ROWS:-none/8/0 none/32/0}
TRAIN_STEPS=${TRAIN_STEPS:-60}
BENCH_STEPS=${BENCH_STEPS:-10}
WORKERS=${WORKERS:-4}
OUT=${OUT:-/tmp/out}
PY=${PY:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
R="$OUT/loop"
WORK=${WORK:-/tmp/loop-work}
mkdir -p "$R" "$WORK"
export TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
BASE_PYTHONPATH=${PYTHONPATH:-}
first_src=${SRCS%% *}
first_src=${first_src#*=}
wt() {  # wt SRC ARGS...: whisper-tune from the code tree SRC
  local src=$1
  shift
  PYTHONPATH="$src${BASE_PYTHONPATH:+:$BASE_PYTHONPATH}" "$PY" -m whisper_tune.cli "$@" 2>&1 | tr '\r' '\n' \
    | grep -v -E '%\||^\s*$|Warning|warn' || true
}
steps_of() {  # steps_of ARCH: TRAIN_STEPS_<ARCH> if set, else TRAIN_STEPS
  local var="TRAIN_STEPS_${1//-/_}"
  echo "${!var:-$TRAIN_STEPS}"
}
for arch in $ARCHS; do
  steps=$(steps_of "$arch")
  # shellcheck disable=SC2086  # ROWS is a list
  wt "$first_src" bench train --arch "$arch" --rows $ROWS --steps "$BENCH_STEPS" --out "$R/bench-$arch" \
    --work "$WORK" | tee "$R/bench-$arch.log"
  model="$WORK/random-$arch"
  wt "$first_src" prepare --data "$CORPUS" --language mr --split train --processor "$model" \
    --out "$WORK/prepared-$arch" | tail -3
  for row in $ROWS; do
    IFS=/ read -r quant batch share <<< "$row"
    for named in $SRCS; do
      name=${named%%=*}
      src=${named#*=}
      run="$WORK/run-$arch-$quant-$batch-$share-$name"
      rm -rf "$run"
      start=$(date +%s)
      wt "$src" train --config marathi-large-v2-int8 model.base="$model" data.source="$WORK/prepared-$arch" \
        model.quantization="$quant" model.gradient_checkpointing="$share" train.batch_size="$batch" \
        train.max_steps="$steps" train.num_workers="$WORKERS" \
        train.log_every=20 train.save_every=100000 train.output_dir="$run" eval.every=-1 | tail -2
      cp "$run/run.json" "$R/run-$arch-$quant-$batch-$share-$name.json"
      echo "$arch $row $name: $(( $(date +%s) - start )) s wall"
    done
  done
done
PYTHONPATH="$first_src${BASE_PYTHONPATH:+:$BASE_PYTHONPATH}" "$PY" "$HERE/loop_table.py" "$R" \
  --command "CORPUS=$CORPUS SRCS=\"$SRCS\" ARCHS=\"$ARCHS\" ROWS=\"$ROWS\" TRAIN_STEPS=$TRAIN_STEPS$(for a in $ARCHS; do
    [ "$(steps_of "$a")" != "$TRAIN_STEPS" ] && echo -n " TRAIN_STEPS_${a//-/_}=$(steps_of "$a")"; done) BENCH_STEPS=$BENCH_STEPS WORKERS=$WORKERS bash benchmarks/gpu_loop.sh"
