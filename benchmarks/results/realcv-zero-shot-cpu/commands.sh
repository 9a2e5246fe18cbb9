#!/bin/bash
# zero-shot CPU figures on the held-out slice, per language
export PYTHONPATH=/work/wt-realcv/src
PY=/work/main/.venv/bin/python
for l in mn vi ka; do
  /usr/bin/time -f "prepare $l %e s" $PY -m whisper_tune.cli prepare --data /work/shared/data/cv61-sample/$l --language $l --split 'validated[:80%]' --out /tmp/realcv/prep-$l-train --num-proc 1 --processor /tmp/whisper-base-cv
  /usr/bin/time -f "evaluate $l %e s" $PY -m whisper_tune.cli evaluate --model /tmp/whisper-base-cv --data /work/shared/data/cv61-sample/$l --split 'validated[80%:]' --language $l --out /tmp/realcv/eval-$l --batch-size 8
done
