"""Unwritable outputs (issue 29 item 5): one line, exit 2, before anything loads or is written."""

import os

import pytest

from whisper_tune.cli import main
from whisper_tune.errors import UserError
from whisper_tune.writable import check_writable


def test_a_new_folder_under_a_writable_one_passes_and_nothing_is_left(tmp_path):
    check_writable(tmp_path / "a" / "b", "--out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["/proc/whisper-tune-out", "/proc/self/x/y", "/sys/whisper-tune"])
def test_pseudo_file_systems_are_refused(where):
    with pytest.raises(UserError, match="pseudo file system|cannot be"):
        check_writable(where, "train.output_dir")


def test_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_writable(tmp_path / "f", "--out")
    with pytest.raises(UserError, match="is a file"):
        check_writable(tmp_path / "f" / "sub", "--out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        with pytest.raises(UserError, match="cannot be written"):
            check_writable(tmp_path / "ro" / "out", "--out")
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_a_failing_write_is_one_line(tmp_path, monkeypatch):
    """What a read-only mount does (also to root): the probe file cannot be created."""
    import tempfile

    def refuse(*args, **kw):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(UserError, match="Read-only file system"):
        check_writable(tmp_path / "out", "--out")


def _one_line(capsys, says):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("whisper-tune: error:") and says in err[0], err


def test_transcribe_checks_out_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from conftest import write_tone

    import whisper_tune.cli as cli

    monkeypatch.setattr(cli, "_engine", lambda *a: pytest.fail("the model loaded"))
    audio = write_tone(tmp_path / "a.wav")
    (tmp_path / "taken").write_text("x")
    assert main(["transcribe", str(audio), "--out", str(tmp_path / "taken")]) == 2
    _one_line(capsys, "is a file, not a folder")
    assert main(["transcribe", str(audio), "--out", "/proc/whisper-tune"]) == 2
    _one_line(capsys, "pseudo file system")


def test_prepare_and_train_check_their_folders_first(tmp_path, capsys, small_corpus):
    (tmp_path / "taken").write_text("x")
    assert main(["prepare", "--data", str(small_corpus), "--split", "train", "--out", "/proc/x"]) == 2
    _one_line(capsys, "--out /proc/x is on a pseudo file system")
    overrides = [f"data.source={small_corpus}", "data.train_split=train", "model.base=openai/whisper-tiny"]
    assert main(["train", *overrides, "train.output_dir=/proc/whisper-tune/run"]) == 2
    _one_line(capsys, "train.output_dir /proc/whisper-tune/run")
    assert main(["train", *overrides, f"train.output_dir={tmp_path / 'taken'}"]) == 2
    _one_line(capsys, "is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_exports_check_out_before_the_merge(tmp_path, capsys, monkeypatch):
    """export-ct2 and export-ggml refused a bad --out only after the merge had loaded the model."""
    import whisper_tune.export as export

    monkeypatch.setattr(export, "merged_source", lambda *a, **k: pytest.fail("the model loaded"))
    (tmp_path / "taken").write_text("x")
    model = ["--model", str(tmp_path)]
    assert main(["export-ct2", *model, "--out", str(tmp_path / "taken")]) == 2
    _one_line(capsys, "is a file, not a folder")
    assert main(["export-ggml", *model, "--out", "/proc/whisper-tune/ggml.bin"]) == 2
    _one_line(capsys, "pseudo file system")
    assert main(["export-ggml", *model, "--out", str(tmp_path / "taken" / "ggml.bin")]) == 2
    _one_line(capsys, "is a file")
