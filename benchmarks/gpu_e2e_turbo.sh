#!/usr/bin/env bash
# End to end at full size on the GPU machine: a random-weight large-v3-turbo (128 mel bins,
# 51866 tokens, 4 decoder layers) through prepare -> train -> evaluate -> merge -> export-ct2,
# to show that nothing in the pipeline assumes 80 bins or v2 token ids. No speech model is
# measured here (random weights, tone clips labelled with the demo's Marathi sentences).
#
# Here:    bash ../shared/gpu/wheels.sh .whl; pip download ctranslate2 (cp312) into .whl-ct2
# There:   bash benchmarks/gpu_e2e_turbo.sh   (device run, carry .whl and .whl-ct2)
set -euo pipefail
OUT=${OUT:-/tmp/out}
W=/tmp/e2e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .whl-ct2/*.whl
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1
mkdir -p "$OUT" "$W"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/e2e.log"
cli() {
  echo "+ whisper-tune $*" | tee -a "$OUT/e2e.log"
  rc=0; python3 -m whisper_tune.cli "$@" > "$W/step.log" 2>&1 || rc=$?
  { grep -v -i warn "$W/step.log" | grep -v "it/s\]" | tail -8 || true; } | tee -a "$OUT/e2e.log"
  [ "$rc" = 0 ] || { echo "exit $rc" | tee -a "$OUT/e2e.log"; exit "$rc"; }
}
python3 - "$W" <<'PY'
import json, sys
from pathlib import Path
import numpy as np, soundfile as sf
from whisper_tune.bench import save_random
from whisper_tune.demo_data import demo_sentences
w = Path(sys.argv[1]); (w / "clips").mkdir(parents=True, exist_ok=True)
save_random("large-v3-turbo", w / "turbo")
rng, rows = np.random.default_rng(0), []
for i, text in enumerate((demo_sentences("mr") * 2)[:288]):
    t = np.arange(int(rng.uniform(2, 6) * 16000)) / 16000
    sf.write(w / "clips" / f"c{i:03d}.wav", (0.1 * np.sin(2 * np.pi * rng.uniform(100, 400) * t)).astype(np.float32), 16000)
    rows.append({"audio": f"clips/c{i:03d}.wav", "text": text, "split": "test" if i >= 256 else "train"})
(w / "manifest.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
print("corpus and random large-v3-turbo ready")
PY
cli train --config marathi-large-v3-turbo model.base=$W/turbo data.source=$W/manifest.jsonl data.train_split=train \
  data.eval_split=test train.output_dir=$W/run train.max_steps=200 train.num_workers=8 eval.every=100 \
  eval.max_samples=32 eval.patience=null
cli evaluate --adapter $W/run/best --data $W/manifest.jsonl --split test --max-new-tokens 32 --out $W/eval
cli merge --adapter $W/run/adapter --out $W/merged
cli export-ct2 --model $W/merged --out $W/ct2 --compute-type int8_float16
python3 - "$W" <<'PY' 2>&1 | tee -a "$OUT/e2e.log"
import json, sys
from pathlib import Path
w = Path(sys.argv[1])
cfg = json.loads((w / "merged" / "config.json").read_text())
gen = json.loads((w / "merged" / "generation_config.json").read_text())
pre = json.loads((w / "ct2" / "preprocessor_config.json").read_text())
labels = __import__("whisper_tune.prepare", fromlist=["load_prepared"]).load_prepared(w / "run" / "prepared" / "train")[0]["labels"][:4]
print("merged: mel bins", cfg["num_mel_bins"], "vocab", cfg["vocab_size"], "layers", cfg["encoder_layers"], "/", cfg["decoder_layers"])
print("generation_config: <|transcribe|> =", gen["task_to_id"]["transcribe"], " <|yue|> =", gen["lang_to_id"].get("<|yue|>"))
print("prepared label prefix:", list(labels))
print("ct2 export: preprocessor feature_size", pre["feature_size"], "files", sorted(p.name for p in (w / "ct2").iterdir()))
PY
cp $W/run/run.json $W/run/metrics.jsonl $W/run/training.png "$OUT/" 2>/dev/null || true
cp $W/eval/summary.json "$OUT/eval-summary.json" 2>/dev/null || true
