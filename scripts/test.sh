#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. Extra arguments go to pytest.
# Two pytest-xdist workers by default, a test file per worker at a time (module fixtures are
# built once): on a 2-core machine the suite took 6.3 min this way, about 11 min in one
# process. WHISPER_TUNE_TEST_WORKERS=0 runs it in one process, N in N workers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
workers=${WHISPER_TUNE_TEST_WORKERS:-2}
if [ "$workers" = 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
