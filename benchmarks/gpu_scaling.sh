#!/usr/bin/env bash
# 1 GPU against 2 GPUs (same per-GPU batch) for `whisper-tune train`, launched by torchrun and
# by `accelerate launch`: random-weight large-v2 and large-v3-turbo, int8-wo, LoRA r=32 on
# q/v, batch 16 per GPU, checkpointing, $STEPS steps on tone clips labelled with the demo's
# sentences. Prints and writes (scaling.md, scaling.json) the steady samples/s that run.json
# records (the first step after each loader start left out), the speed-up over 1 GPU, the
# efficiency (speed-up / GPUs) and the peak memory of every GPU.
#
# Here:    bash ../shared/gpu/wheels.sh .whl
# There:   bash benchmarks/gpu_scaling.sh   (device run on nvidia-h100-x2 / nvidia-h200-x2, carry .whl)
set -euo pipefail
OUT=${OUT:-/tmp/out}
W=/tmp/scaling
STEPS=${STEPS:-40}
ARCHS=${ARCHS:-large-v2 large-v3-turbo}
# torchrun:VARIANT runs benchmarks/ddp_variant.py (main, no-bucket-view, host-skip): an A/B of the loop
LAUNCHERS=${LAUNCHERS:-1gpu torchrun accelerate}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1
mkdir -p "$OUT" "$W"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/scaling.log"
python3 - "$W" $ARCHS <<'PY'
import json, sys
from pathlib import Path
import numpy as np, soundfile as sf
from whisper_tune.bench import save_random
from whisper_tune.demo_data import demo_sentences
w = Path(sys.argv[1]); (w / "clips").mkdir(parents=True, exist_ok=True)
for arch in sys.argv[2:]:
    save_random(arch, w / arch)
rng, rows = np.random.default_rng(0), []
for i, text in enumerate((demo_sentences("mr") * 3)[:640]):
    t = np.arange(int(rng.uniform(2, 8) * 16000)) / 16000
    sf.write(w / "clips" / f"c{i:03d}.wav", (0.1 * np.sin(2 * np.pi * rng.uniform(100, 400) * t)).astype(np.float32), 16000)
    rows.append({"audio": f"clips/c{i:03d}.wav", "text": text})
(w / "manifest.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
PY
launch() {  # launcher, then the train arguments
  local how=$1; shift
  case $how in
    1gpu) python3 -m whisper_tune.cli "$@" ;;
    torchrun) torchrun --nproc_per_node 2 -m whisper_tune.cli "$@" ;;
    torchrun:*) torchrun --nproc_per_node 2 benchmarks/ddp_variant.py "${how#torchrun:}" "$@" ;;
    accelerate) python3 -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 \
                  --mixed_precision no --dynamo_backend no -m whisper_tune.cli "$@" ;;
  esac
}
for arch in $ARCHS; do
  for how in $LAUNCHERS; do
    tag=${how/:/-}
    run=$W/run-$arch-$tag
    launch $how train --config marathi-large-v2-int8 model.base=$W/$arch model.quantization=int8-wo \
      data.source=$W/manifest.jsonl train.batch_size=16 train.max_steps=$STEPS train.num_workers=4 \
      train.log_every=5 eval.every=-1 train.save_every=1000 train.output_dir=$run > "$W/log-$arch-$tag" 2>&1 \
      || { tail -20 "$W/log-$arch-$tag"; exit 1; }
    cp "$run/run.json" "$OUT/run-$arch-$tag.json"
  done
done
python3 - "$OUT" "$ARCHS" "$LAUNCHERS" <<'PY' | tee -a "$OUT/scaling.log" "$OUT/scaling.md"
import json, sys
from pathlib import Path
out, rows = Path(sys.argv[1]), []
print("| architecture | launcher | GPUs | steady samples/s | overall samples/s | x vs 1 GPU | efficiency | peak GiB per GPU |")
print("|---|---|---|---|---|---|---|---|")
for arch in sys.argv[2].split():
    one = json.loads((out / f"run-{arch}-1gpu.json").read_text())
    for how in sys.argv[3].split():
        r = json.loads((out / f"run-{arch}-{how.replace(':', '-')}.json").read_text())
        n, rate = r["world_size"], r["steady_samples_per_s"]
        speedup = rate / one["steady_samples_per_s"]
        peaks = r.get("peak_gpu_gib_per_rank", [r.get("peak_gpu_gib", 0.0)])
        rows.append({"architecture": arch, "launcher": how, "gpus": n, "steady_samples_per_s": rate,
                     "samples_per_s": r["samples_per_s"], "speedup": speedup, "efficiency": speedup / n,
                     "peak_gpu_gib_per_rank": peaks, "steps": r["steps"], "wall_s": r["wall_s"]})
        print(f"| {arch} | {how} | {n} | {rate:.2f} | {r['samples_per_s']:.2f} | {speedup:.2f}x | "
              f"{100 * speedup / n:.0f} % | {' / '.join(f'{p:.1f}' for p in peaks)} |")
(out / "scaling.json").write_text(json.dumps(rows, indent=1) + "\n")
PY
