#!/usr/bin/env bash
# CPU cost of the demo recipe's candidate settings (issue 15): `whisper-tune train` on the demo
# corpus with real Whisper base, each row for 96 clips (64 for the precision rows), steady
# samples/s from run.json. Rows: "targets batch freeze_encoder [mixed_precision quantization]".
#   bash benchmarks/cpu_demo_rows.sh BASE CORPUS_FOLDER > benchmarks/results/train-demo-cpu/rows.txt
set -euo pipefail
B=$1; DATA=$2; W=${W:-/tmp/cpurow}
for row in "qv 8 false no int8-wo" "qv 4 false no int8-wo" "all-linear 8 false no int8-wo" "qv 8 true no int8-wo" \
           "all-linear 4 false no int8-wo" "qv 4 false bf16 int8-wo" "qv 4 false bf16 none"; do
  set -- $row
  rm -rf "$W"
  .venv/bin/whisper-tune train --config demo model.base=$B data.source=$DATA train.output_dir=$W \
    lora.targets=$1 train.batch_size=$2 lora.freeze_encoder=$3 train.mixed_precision=$4 model.quantization=$5 \
    train.max_steps=$(( $([ "$4" = no ] && echo 96 || echo 64) / $2 )) eval.every=-1 train.save_every=1000 > "$W.log" 2>&1
  echo "$row $(python3 -c "import json; r=json.load(open('$W/run.json')); print(r['samples_per_s'], r['steady_samples_per_s'], r['wall_s'])")"
done
