#!/usr/bin/env bash
# Issue 28's memory-capped table on the GPU machine (benchmarks/gpu_capped.py): the reference
# recipe against whisper-tune's auto batch and checkpointing, under caps emulated on one
# large card, for each architecture in ARCHS (random weights). One call per architecture
# keeps each under about 9 minutes on an H100; a warm machine keeps torch.compile's cache
# (/tmp/torchinductor_*), so large-v3 after large-v2 compiles from it.
#
# Here:    bash ../shared/gpu/wheels.sh .whl     (bitsandbytes, datasets, jiwer, soundfile)
# There:   ARCHS=large-v2 bash benchmarks/gpu_capped.sh   (device run, carry .whl)
#          then ARCHS=large-v3-turbo, then ARCHS=large-v3 (each call's $OUT/capped comes back)
# Settings (environment): ARCHS, CAPS (GiB, default "8 16 24"), HOLDINGS (default
# "int8-wo none"), EFFECTIVE (clips per optimizer step, default 32), STEPS (timed steps of an
# auto row, default 8), RECIPE=0 (leave the recipe row out, for a call that only adds a
# holding: HOLDINGS=none RECIPE=0), OUT (default /tmp/out), WORK (default /tmp/capped-work),
# PY (default python3); TINY=1 is the CPU dry run
# (the tiny architecture, one step each): TINY=1 PY=.venv/bin/python bash benchmarks/gpu_capped.sh
set -euo pipefail
OUT=${OUT:-/tmp/out}
PY=${PY:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH} TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no GPU: a dry run?"
flags=()
[ "${RECIPE:-1}" = 0 ] && flags+=(--no-recipe)
[ -n "${TINY:-}" ] && flags+=(--tiny)
set +e
# shellcheck disable=SC2086  # lists
"$PY" benchmarks/gpu_capped.py "${flags[@]}" --archs ${ARCHS:-large-v2} --caps ${CAPS:-8 16 24} \
  --holdings ${HOLDINGS:-int8-wo none} --effective-batch "${EFFECTIVE:-32}" --steps "${STEPS:-8}" \
  --out "$OUT/capped" --work "${WORK:-/tmp/capped-work}" 2>&1 | grep -v -i -E "warn|it/s\]|kernels-community"
status=${PIPESTATUS[0]}
set -e
ls -l "$OUT/capped"
exit "$status"
