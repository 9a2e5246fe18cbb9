#!/usr/bin/env bash
# 1 GPU against 2 GPUs (torchrun, same per-GPU batch) for `whisper-tune train`, as run.json
# records it: random-weight large-v2 and large-v3-turbo, int8-wo, LoRA r=32 on q/v, batch 16
# per GPU, checkpointing, 40 steps on tone clips labelled with the demo's sentences.
#
# Here:    bash ../shared/gpu/wheels.sh .whl
# There:   bash benchmarks/gpu_scaling.sh   (device run on nvidia-h100-x2 / nvidia-h200-x2, carry .whl)
set -euo pipefail
OUT=${OUT:-/tmp/out}
W=/tmp/scaling
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1
mkdir -p "$OUT" "$W"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/scaling.log"
python3 - "$W" <<'PY'
import json, sys
from pathlib import Path
import numpy as np, soundfile as sf
from whisper_tune.bench import save_random
from whisper_tune.demo_data import demo_sentences
w = Path(sys.argv[1]); (w / "clips").mkdir(parents=True, exist_ok=True)
for arch in ("large-v2", "large-v3-turbo"):
    save_random(arch, w / arch)
rng, rows = np.random.default_rng(0), []
for i, text in enumerate((demo_sentences("mr") * 3)[:640]):
    t = np.arange(int(rng.uniform(2, 8) * 16000)) / 16000
    sf.write(w / "clips" / f"c{i:03d}.wav", (0.1 * np.sin(2 * np.pi * rng.uniform(100, 400) * t)).astype(np.float32), 16000)
    rows.append({"audio": f"clips/c{i:03d}.wav", "text": text})
(w / "manifest.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
PY
for arch in large-v2 large-v3-turbo; do
  for n in 1 2; do
    args=(train --config marathi-large-v2-int8 model.base=$W/$arch model.quantization=int8-wo data.source=$W/manifest.jsonl
          train.batch_size=16 train.max_steps=40 train.num_workers=4 train.log_every=5 eval.every=-1 train.save_every=1000
          train.output_dir=$W/run-$arch-$n)
    if [ "$n" = 1 ]; then python3 -m whisper_tune.cli "${args[@]}" > "$W/log-$arch-$n" 2>&1
    else torchrun --nproc_per_node 2 -m whisper_tune.cli "${args[@]}" > "$W/log-$arch-$n" 2>&1; fi
    python3 - "$W/run-$arch-$n/run.json" "$arch" "$n" <<'PY' | tee -a "$OUT/scaling.log"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]} {sys.argv[3]} GPU: {r['samples_per_s']:.2f} samples/s, peak {r.get('peak_gpu_gib', 0):.1f} GiB, wall {r['wall_s']:.0f} s, world {r['world_size']}")
PY
    cp "$W/run-$arch-$n/run.json" "$OUT/run-$arch-$n.json"
  done
done
