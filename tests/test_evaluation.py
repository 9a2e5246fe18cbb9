import json

import pytest

from whisper_tune.config import DataConfig
from whisper_tune.evaluation import GenerationResult, evaluate, flags, has_loop, summarize


@pytest.mark.parametrize(
    "text", ["हो हो हो हो", "a b a b a b", "तो म्हणाला की तो म्हणाला की तो म्हणाला की", "分分分分分分分分分分"]
)
def test_loops_are_flagged(text):
    assert has_loop(text) and "repetition" in flags("reference words here", text)


@pytest.mark.parametrize("text", ["मी रोज सकाळी चहा पितो", "हो हो हो", "a b a b", "आम्ही सगळे एकत्र जेवतो"])
def test_clean_text_is_not_flagged(text):
    assert not has_loop(text) and flags(text, text) == []


def test_runaway_and_empty_hypotheses():
    assert "too_long" in flags("आज सुट्टी आहे", "आज सुट्टी आहे आणि उद्या पण सुट्टी आहे असे सगळे म्हणतात")
    assert flags("आज सुट्टी आहे", "") == ["empty"]


def test_summary_orthographic_and_normalized():
    result = GenerationResult(["a", "b"], ["आज हवा छान आहे.", "Hello, World"], ["आज हवा छान आहे", "hello world"], 2.0)
    summary, clips = summarize(result, {"mode": "test"})
    assert summary.wer == pytest.approx(100 * 3 / 6)  # "आहे." vs "आहे", Hello/hello, World/world
    assert summary.normalized_wer == 0.0 and summary.normalized_cer == 0.0
    assert summary.n == 2 and summary.clips_per_s == 1.0
    assert clips[0]["errors"] == {"substitutions": 1, "deletions": 0, "insertions": 0, "reference_words": 4}


def test_evaluate_writes_reports_for_base_and_adapter(tiny_model_dir, tiny_adapter, small_corpus, tmp_path):
    data = DataConfig(source=str(small_corpus), language="mr")
    for adapter, expected_mode in ((None, "base"), (str(tiny_adapter), "merged")):
        summary, folder = evaluate(
            str(tiny_model_dir), adapter, data, "test", tmp_path / expected_mode, max_new_tokens=8, progress=False
        )
        saved = json.loads((folder / "summary.json").read_text())
        assert {"wer", "cer", "normalized_wer", "normalized_cer", "n", "seconds", "clips_per_s"} <= saved.keys()
        assert saved["model"]["merged"] == (adapter is not None) and saved["model"]["quantization"] == "none"
        assert saved["n"] == summary.n > 0
        clips = [json.loads(line) for line in (folder / "clips.jsonl").read_text().splitlines()]
        assert len(clips) == summary.n and all(
            {"reference", "hypothesis", "errors", "flags"} <= c.keys() for c in clips
        )
    summary, _ = evaluate(
        None, str(tiny_adapter), data, "test", tmp_path / "exact", exact=True, max_new_tokens=8, progress=False
    )
    assert summary.model["quantization"] == "int8" and not summary.model["merged"]


def test_nothing_to_score_is_an_error_not_nan():
    from whisper_tune.errors import UserError
    from whisper_tune.metrics import error_rates

    with pytest.raises(UserError, match="nothing to score: no clip was transcribed"):
        summarize(GenerationResult([], [], [], 0.0))
    with pytest.raises(UserError, match="nothing to score after normalization: none of the 2 references"):
        summarize(GenerationResult(["a", "b"], ["।।", "..."], ["x", ""], 1.0))
    with pytest.raises(ValueError, match="no references"):
        error_rates([], [])


def test_evaluate_on_a_split_with_every_clip_rejected_is_one_error(tiny_model_dir, tmp_path):
    from whisper_tune.errors import UserError

    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "gone.wav", "text": "एक"}) + "\n")
    data = DataConfig(source=str(tmp_path / "m.jsonl"), language="mr")
    with pytest.raises(
        UserError, match=r"holds no clips: all 1 rows were rejected \(missing 1\); see .*rejected.jsonl"
    ):
        evaluate(str(tiny_model_dir), None, data, "all", tmp_path / "eval", progress=False)
    assert not (tmp_path / "eval" / "summary.json").exists()


def test_references_longer_than_the_generation_limit_are_warned(caplog):
    """Georgian runs ~2.5 tokens a letter: a long sentence cannot be matched under 255 tokens."""
    from whisper_tune.evaluation import warn_if_cut_short

    labels = {"labels": [[0] * (5 + 255), [0] * (5 + 256), [0] * 20]}
    with caplog.at_level("WARNING", logger="whisper_tune.evaluation"):
        assert warn_if_cut_short(labels, 255) == 1
    assert "1 reference transcripts are longer than --max-new-tokens 255" in caplog.text
    assert warn_if_cut_short(labels, 256) == 0
