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
    assert "train 7, dev 1, test 1, unseen 1, unseen-voices 1 clips" in capsys.readouterr().out


def test_demo_command_prints_the_table(tiny_model_dir, demo_corpus, tmp_path, capsys):
    import shutil

    from conftest import need_espeak

    need_espeak()
    shutil.copytree(demo_corpus, tmp_path / "demo" / "corpus")  # built once per session (conftest)
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
        "--no-card",  # the card's wiring is test_demo's
        "train.batch_size=2",
        "train.num_workers=0",
        "lora.r=2",
        "lora.alpha=4",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "base model: " in out and "(given)" in out and "| zero-shot |" in out and "training plot:" in out
    assert "report card" not in out and not (tmp_path / "demo" / "card").exists()


SUBCOMMANDS = {
    "prepare",
    "train",
    "evaluate",
    "transcribe",
    "merge",
    "average",
    "export-ct2",
    "export-ggml",
    "serve",
    "api",
    "bench",
    "make-demo-data",
    "make-processor",
    "demo",
    "import-ct2",
    "align-heads",
    "build-lm",
}


def test_help_lists_subcommands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for name in SUBCOMMANDS:
        assert name in proc.stdout


def test_the_subcommand_table_is_the_documented_set():
    """A subcommand added or lost shows here, in --help and in the README's examples."""
    from pathlib import Path

    from whisper_tune.cli import COMMANDS, build_parser

    assert set(COMMANDS) == SUBCOMMANDS
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    parser = build_parser()
    for name, command in COMMANDS.items():
        assert command.run.__doc__, name  # the docstring is the help
        assert f"whisper-tune {name}" in readme, f"README has no example of {name}"
        with pytest.raises(SystemExit) as done:
            parser.parse_args([name, "--help"])
        assert done.value.code == 0


def test_data_flags_take_defaults_from_the_config():
    from whisper_tune.cli import DATA_FLAGS, build_parser
    from whisper_tune.config import DataConfig

    args = build_parser().parse_args(["evaluate", "--data", "x"])
    assert {f: getattr(args, f) for f in DATA_FLAGS} == {f: getattr(DataConfig(), f) for f in DATA_FLAGS}
    assert not hasattr(args, "processor")  # evaluate takes its tokenizer from the model


def test_overrides_may_follow_stop_after():
    """Issue 29 item 8: ``train --stop-after 3 train.learning_rate=1e-4`` (argparse alone
    refuses overrides after an option); anything else left over is still refused."""
    from whisper_tune.cli import _parse

    args = _parse(["train", "lora.r=8", "--stop-after", "3", "train.learning_rate=1e-4", "--resume", "eval.every=-1"])
    assert args.stop_after == 3 and args.resume
    assert args.overrides == ["lora.r=8", "train.learning_rate=1e-4", "eval.every=-1"]
    with pytest.raises(SystemExit) as exited:
        _parse(["train", "lora.r=8", "--stop-after", "3", "stray"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit):
        _parse(["merge", "--adapter", "a", "--out", "b", "x=1"])  # no overrides there
