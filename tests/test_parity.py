"""export-ct2/export-ggml --check: the export scored on its own runtime next to its source.

Random tiny models transcribe garbage (WER in the hundreds), so these tests check that the
reported numbers are the ones of the transcripts listed, that the verdict and exit code follow
the difference, and that a runtime decodes as asked (whisper.cpp f16 ends the source's
transcripts word for word), not that the models are any good.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import make_cpp_tiny

from whisper_tune.cli import main
from whisper_tune.config import DataConfig
from whisper_tune.errors import UserError
from whisper_tune.metrics import error_rates
from whisper_tune.normalizers import orthographic
from whisper_tune.parity import CARD_BEGIN, METRICS, PARITY_FAILED, CheckPlan, check_export, run_check

TOKENS = "16"  # new tokens per clip: short garbage, a fast test
GENEROUS = "1000"  # points: more than garbage of 16 tokens can lose against 2 short references


def _rescored(report: dict, side: str) -> float:
    """WER recomputed from the report's own transcripts."""
    refs = [orthographic(c["reference"]) for c in report["clips"]]
    return error_rates(refs, [orthographic(c[side]) for c in report["clips"]])["wer"]


def _check_report(report: dict, kind: str) -> None:
    """Both sides scored on the same 2 clips, finite rates, difference = export - source."""
    assert report["kind"] == kind and report["n"] == 2 and len(report["clips"]) == 2
    assert report["max_new_tokens"] == int(TOKENS) and report["language"] == "mr"
    for metric in METRICS:
        assert math.isfinite(report["source"][metric]) and math.isfinite(report["exported"][metric])
        assert report["difference"][metric] == pytest.approx(report["exported"][metric] - report["source"][metric])
    assert report["source"]["wer"] == pytest.approx(_rescored(report, "source"))
    assert report["exported"]["wer"] == pytest.approx(_rescored(report, "export"))


def test_export_ct2_check_through_the_cli(tiny_model_dir, tiny_adapter, small_corpus, tmp_path, capsys):
    """base + adapter: merged, converted, then both scored while the merged folder still lives."""
    pytest.importorskip("faster_whisper")
    out = tmp_path / "ct2"
    args = ["export-ct2", "--model", str(tiny_model_dir), "--adapter", str(tiny_adapter), "--out", str(out)]
    check = ["--check", str(small_corpus), "--max-new-tokens", TOKENS, "--max-wer-increase", GENEROUS]
    assert main([*args, "--compute-type", "int8", *check]) == 0
    printed = capsys.readouterr().out
    assert "parity on 2 clips of test (mr)" in printed and f"report: {out / 'parity.json'}" in printed
    report = json.loads((out / "parity.json").read_text(encoding="utf-8"))
    _check_report(report, "ct2")
    assert report["verdict"] == "pass" and report["runtime"].startswith("faster-whisper (int8")
    assert not Path(report["source_model"]).exists()  # the temporary merge is gone once the check ran
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "## Parity with the source model" in card and "Verdict: **pass**" in card
    assert f"| difference | {report['difference']['wer']:+.2f} |" in card


def test_a_worse_export_fails_the_check(tiny_cpp_model_dir, small_corpus, tmp_path, capsys):
    """An export of another random model (other seed, same shape) against the first one: its
    WER differs, and the verdict and exit code follow --max-wer-increase around that difference."""
    pytest.importorskip("faster_whisper")
    from whisper_tune.export import export_ct2

    other = export_ct2(make_cpp_tiny(tmp_path / "other", seed=1), tmp_path / "ct2", quantization="float32")
    (other / "README.md").write_text("# my card\n", encoding="utf-8")
    data = DataConfig(source=str(small_corpus))
    first = check_export("ct2", other, tiny_cpp_model_dir, data, max_new_tokens=int(TOKENS))
    assert first.exported["wer"] != first.source["wer"]
    assert [c["export"] for c in first.clips] != [c["source"] for c in first.clips]
    lost = first.difference["wer"]

    plan = CheckPlan(data, "test", lost - 0.5, int(TOKENS), None)
    assert run_check(plan, "ct2", other, tiny_cpp_model_dir) == PARITY_FAILED
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("whisper-tune: error:")]
    assert len(errors) == 1 and "export lost accuracy" in errors[0] and f"({lost:+.2f} points" in errors[0]
    assert json.loads((other / "parity.json").read_text(encoding="utf-8"))["verdict"] == "fail"

    passed = check_export("ct2", other, tiny_cpp_model_dir, data, max_wer_increase=lost + 0.5, max_new_tokens=16)
    assert passed.verdict == "pass" and passed.difference["wer"] == pytest.approx(lost)
    card = (other / "README.md").read_text(encoding="utf-8")
    assert card.startswith("# my card\n") and card.count(CARD_BEGIN) == 1 and "Verdict: **pass**" in card


def test_export_ggml_check_runs_whisper_cpp(tiny_cpp_model_dir, small_corpus, tmp_path, capsys):
    """f16 on whisper.cpp: FILE.parity.json beside the file, and transcripts that end as
    transformers' end, in as many words (same model, language, greedy search and token cap)."""
    pytest.importorskip("pywhispercpp")
    out = tmp_path / "model.bin"
    args = ["export-ggml", "--model", str(tiny_cpp_model_dir), "--out", str(out), "--check", str(small_corpus)]
    assert main([*args, "--max-new-tokens", TOKENS, "--max-wer-increase", GENEROUS]) == 0
    report = json.loads((tmp_path / "model.bin.parity.json").read_text(encoding="utf-8"))
    _check_report(report, "ggml")
    assert report["runtime"] == "whisper.cpp (model.bin)" and report["source_model"] == str(tiny_cpp_model_dir)
    for clip in report["clips"]:  # the first words are near-ties that whisper.cpp's own log-mel may flip
        assert len(clip["export"].split()) == len(clip["source"].split()) > 8
        assert clip["export"].split()[-8:] == clip["source"].split()[-8:]
    assert not (tmp_path / "README.md").exists()
    assert "parity on 2 clips" in capsys.readouterr().out


def test_check_refuses_bad_settings_before_work(tiny_cpp_model_dir, small_corpus, tmp_path, capsys):
    """A bad flag costs no conversion; a bad kind, token cap or export costs no scoring."""
    out = tmp_path / "ct2"
    args = ["export-ct2", "--model", str(tiny_cpp_model_dir), "--out", str(out), "--check", str(small_corpus)]
    assert main([*args, "--max-samples", "0"]) == 2
    assert main([*args, "--language", "klingon"]) == 2
    err = capsys.readouterr().err
    assert "--max-samples must be at least 1" in err and "unknown language 'klingon'" in err
    assert not out.exists()
    data = DataConfig(source=str(small_corpus))
    with pytest.raises(UserError, match="must be 1 to 220"):
        check_export("ct2", tmp_path, tiny_cpp_model_dir, data, max_new_tokens=221)
    with pytest.raises(UserError, match="unknown export kind"):
        check_export("onnx", tmp_path, tiny_cpp_model_dir, data)
    with pytest.raises(UserError, match="not a CTranslate2 model folder"):
        check_export("ct2", tmp_path, tiny_cpp_model_dir, data)


def test_check_on_the_demo_sized_model(whisper_base_dir, small_corpus, tmp_path, capsys):
    """Real Whisper base (the demo's model) through both runtimes: each check scores the same
    clips on both sides and reports numbers that its own transcripts give."""
    pytest.importorskip("pywhispercpp")
    check = ["--check", str(small_corpus), "--max-new-tokens", "24", "--max-wer-increase", GENEROUS]
    base = str(whisper_base_dir)
    assert main(["export-ct2", "--model", base, "--out", str(tmp_path / "ct2"), "--compute-type", "int8", *check]) == 0
    assert main(["export-ggml", "--model", base, "--out", str(tmp_path / "q8.bin"), "--type", "q8_0", *check]) == 0
    for kind, path in (("ct2", tmp_path / "ct2" / "parity.json"), ("ggml", tmp_path / "q8.bin.parity.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        assert report["kind"] == kind and report["n"] == 2 and report["verdict"] == "pass"
        assert report["source"]["wer"] == pytest.approx(_rescored(report, "source"))
        assert report["exported"]["wer"] == pytest.approx(_rescored(report, "export"))
