"""Shallow fusion inside Whisper's generate: weight 0 leaves the scores as they are, a large
weight makes the tiny random Whisper say the language model's sentence (greedy and beam), and
the engines route a fused decoding to generate or refuse it in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from whisper_tune.errors import UserError
from whisper_tune.inference.fusion import ShallowFusion
from whisper_tune.inference.options import DecodingOptions
from whisper_tune.text_lm import build_lm

SENTENCE = "आजी मला गोष्ट सांगते."
NEW_TOKENS = 40


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from whisper_tune.modeling import load_for_inference

    return load_for_inference(str(tiny_model_dir), None, torch.device("cpu"), language="mr")


@pytest.fixture(scope="module")
def lm_file(tiny_model_dir, tmp_path_factory):
    from whisper_tune.processor import load_tokenizer

    lm = build_lm(load_tokenizer(str(tiny_model_dir)), [SENTENCE] * 2, order=8)
    return lm.save(tmp_path_factory.mktemp("lm") / "lm.json")


@pytest.fixture(scope="module")
def audio():
    t = np.arange(16000 * 2) / 16000
    return (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_weight_zero_leaves_the_scores_unchanged(lm_file):
    from whisper_tune.text_lm import NgramLM

    fusion = ShallowFusion(NgramLM.load(lm_file), weight=0.0)
    scores = torch.randn(3, 51865)
    assert fusion(torch.zeros(3, 4, dtype=torch.long), scores) is scores


def test_the_added_score_is_the_weighted_lm_log_probability(lm_file):
    from whisper_tune.text_lm import NgramLM

    lm = NgramLM.load(lm_file)
    fusion = ShallowFusion(lm, weight=0.5, length_bonus=0.25, timestamp_begin=50364)
    fusion.set_begin_index(2)
    ids = torch.tensor([[50258, 50359, 100, 200]])
    scores = torch.randn(1, 51865)
    got = fusion(ids, scores) - scores.log_softmax(-1)
    expected = 0.5 * torch.from_numpy(lm.logprobs([100, 200]))
    assert torch.allclose(got[0, : lm.eos], expected[: lm.eos] + 0.25, atol=1e-5)
    assert torch.allclose(got[0, lm.eos], expected[lm.eos], atol=1e-5)
    assert torch.allclose(got[0, 50364:], expected[lm.eos].expand(51865 - 50364), atol=1e-5)  # time stamps: the end
    assert torch.all(got[0, lm.eos + 1 : 50364] == -float("inf"))  # start, language, task: never after the start
    untimed = fusion(torch.tensor([[50258, 50363, 100, 200]]), scores) - scores.log_softmax(-1)
    assert torch.all(untimed[0, lm.eos + 1 :] == -float("inf"))  # after <|notimestamps|>: no time stamps either


@pytest.mark.parametrize("beams", [1, 3])
def test_a_large_weight_says_the_lms_sentence(loaded, lm_file, audio, beams):
    from whisper_tune.inference import TransformersEngine

    engine = TransformersEngine(loaded.model, loaded.processor, "mr")
    plain = DecodingOptions.beam(beams) if beams > 1 else DecodingOptions.greedy()
    without = engine.decode_clips([audio], "mr", "transcribe", NEW_TOKENS, decoding=plain)
    fused = plain.with_fields(lm=str(lm_file), lm_weight=50.0)  # the random decoder's dislike of the end is outweighed
    with_lm = engine.decode_clips([audio], "mr", "transcribe", NEW_TOKENS, decoding=fused)
    assert without != [SENTENCE] and with_lm == [SENTENCE]
    assert fused.name == ("greedy+lm" if beams == 1 else f"beam {beams}+lm")
    ((segments, _),) = engine.transcribe([audio], decoding=fused)  # files: generate with time stamps
    assert segments[0].text == SENTENCE  # (the random decoder never ends: it says it again)


def test_a_fused_decoding_never_takes_the_fast_decoder(loaded, lm_file):
    from whisper_tune.inference import TransformersEngine

    engine = TransformersEngine(loaded.model, loaded.processor, "mr", clips="fast")
    fused = DecodingOptions.greedy().with_fields(lm=str(lm_file))
    assert not engine.fast_clips("mr", fused) and not engine.batched(fused)


def test_options_and_cli_refuse_bad_fusion_settings_in_one_line(lm_file, tmp_path, capsys):
    from whisper_tune.cli import main

    with pytest.raises(UserError, match="weight"):
        DecodingOptions(lm="x.json", lm_weight=-1)
    assert main(["transcribe", "a.wav", "--lm-weight", "0.5"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    assert main(["transcribe", "a.wav", "--lm", str(bad)]) == 2
    assert main(["evaluate", "--model", "m", "--data", "demo", "--lm", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "add --lm FILE" in err[0] and "not a whisper-tune language model" in err[1]
    assert "not found" in err[2]


def test_an_export_refuses_the_language_model_in_one_line():
    from whisper_tune.inference.engine import refuse_lm

    refuse_lm(DecodingOptions(), "faster-whisper")
    with pytest.raises(UserError, match="--lm .* not on faster-whisper") as e:
        refuse_lm(DecodingOptions(lm="lm.json"), "faster-whisper")
    assert "\n" not in str(e.value)
