"""The command line: results printed, and user errors as one line with exit code 2."""

import json
import os
import subprocess
import sys

import pytest

from whisper_tune.cli import main


def run_cli(*args, cwd=None):
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "whisper_tune.cli", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def _one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("whisper-tune: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_source(tmp_path):
    proc = run_cli("prepare", "--data", str(tmp_path / "nope"), "--split", "train", "--out", str(tmp_path / "o"))
    _one_line_error(proc, "not found", "Common Voice folder")


def test_wrong_column_and_unknown_language(tmp_path):
    (tmp_path / "m.csv").write_text("path,text\na.wav,hi\n")
    proc = run_cli(
        "prepare", "--data", str(tmp_path / "m.csv"), "--text-column", "sentence", "--out", str(tmp_path / "o")
    )
    _one_line_error(proc, "'sentence'", "path, text", "--text-column")
    proc = run_cli("prepare", "--data", str(tmp_path / "m.csv"), "--language", "elvish", "--out", str(tmp_path / "o"))
    _one_line_error(proc, "unknown language 'elvish'")


def test_unknown_split(small_corpus, tmp_path):
    proc = run_cli("prepare", "--data", str(small_corpus), "--split", "training", "--out", str(tmp_path / "o"))
    _one_line_error(proc, "split 'training'", "available: train, dev, test")


def test_prepare_prints_counts_and_reuses(small_corpus, tmp_path, capsys):
    args = [
        "prepare",
        "--data",
        str(small_corpus),
        "--split",
        "dev+test",
        "--out",
        str(tmp_path / "o"),
        "--num-proc",
        "1",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    n = sum(1 for split in ("dev", "test") for _ in open(small_corpus / f"{split}.tsv")) - 2  # minus headers
    assert f"dev+test: prepared {n} clips" in out and "clips/s" in out
    assert main(args) == 0
    assert "already prepared" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "prepared.json").read_text())["prepared"] == n


def test_make_demo_data_and_processor(tmp_path, capsys):
    pytest.importorskip("soundfile")
    assert main(["make-processor", "--out", str(tmp_path / "proc"), "--n-mels", "128"]) == 0
    assert json.loads((tmp_path / "proc" / "preprocessor_config.json").read_text())["feature_size"] == 128
    from conftest import need_espeak

    need_espeak()
    assert main(["make-demo-data", "--out", str(tmp_path / "d"), "--sentences", "10", "--train-repeats", "1"]) == 0
    assert "train 8, dev 1, test 1 clips" in capsys.readouterr().out


def test_demo_command_prints_the_table(tiny_model_dir, tmp_path, capsys):
    from conftest import need_espeak

    need_espeak()
    args = [
        "demo",
        "--out",
        str(tmp_path / "demo"),
        "--model",
        str(tiny_model_dir),
        "--steps",
        "1",
        "--eval-samples",
        "2",
        "train.batch_size=2",
        "train.num_workers=0",
        "lora.r=2",
        "lora.alpha=4",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "base model: " in out and "(given)" in out and "| zero-shot |" in out and "training plot:" in out


def test_help_lists_subcommands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for name in (
        "prepare",
        "train",
        "evaluate",
        "transcribe",
        "merge",
        "export-ct2",
        "import-ct2",
        "make-demo-data",
        "make-processor",
        "demo",
    ):
        assert name in proc.stdout
