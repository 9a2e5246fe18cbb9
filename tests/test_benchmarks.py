"""The benchmark scripts still run (tiny sizes, CPU); no timing is asserted."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_train_step_benchmark_runs(tmp_path):
    _run(
        "train_step.py",
        "--arch",
        "tiny-test",
        "--modes",
        "int8",
        "none",
        "--batch",
        "2",
        "--steps",
        "1",
        "--out",
        str(tmp_path),
    )
    result = json.loads((tmp_path / "train_step-tiny-test-cpu.json").read_text())
    assert [r["mode"] for r in result["rows"]] == ["int8", "none"] and result["command"].startswith("python ")


def test_eval_speed_benchmark_runs(small_corpus, tmp_path):
    _run(
        "eval_speed.py",
        "--arch",
        "tiny-test",
        "--data",
        str(small_corpus),
        "--clips",
        "2",
        "--new-tokens",
        "2",
        "--fast-batches",
        "2",
        "--out",
        str(tmp_path),
    )
    rows = json.loads((tmp_path / "eval_speed-tiny-test-cpu.json").read_text())["rows"]
    assert rows[0]["mode"] == "exact (int8 base + adapter)" and rows[1]["mode"] == "merged"
