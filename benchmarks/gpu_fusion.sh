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
# gpu_card.sh puts the weights together, installs the wheels and records the GPU and versions
STUDY=fusion_study.py exec bash "$(dirname "$0")/gpu_card.sh" --adapter /tmp/w/adapter --work /tmp/fusion-work "$@"
