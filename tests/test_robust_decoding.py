"""Robust decoding: options checked at the edge, the fallback that stops a runaway, and the
options reaching each engine. The tiny random Whisper from conftest loops greedily ("oneself
oneself ..."), which is exactly the runaway the fallback exists for; few new tokens keep it fast."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from whisper_tune.errors import UserError
from whisper_tune.evaluation import has_loop
from whisper_tune.inference.generate import transcribe_audio
from whisper_tune.inference.options import FALLBACK_TEMPERATURES, DecodingOptions, compression_ratio

NEW_TOKENS = 24


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from whisper_tune.modeling import load_for_inference

    return load_for_inference(str(tiny_model_dir), None, torch.device("cpu"), language="mr")


@pytest.fixture(scope="module")
def audio():
    t = np.arange(16000 * 2) / 16000
    return (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def decode(loaded, audio, decoding, **kw):
    return transcribe_audio(
        loaded.model, loaded.processor, audio, "mr", max_new_tokens=NEW_TOKENS, decoding=decoding, **kw
    )[0]


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"beam_size": 0}, "beam size"),
        ({"temperature": (0.4, 0.2)}, "rising"),
        ({"temperature": (0.0, 1.5)}, "from 0 to 1"),
        ({"beam_size": 5, "temperature": (0.2, 0.4)}, "temperature 0"),
        ({"logprob_threshold": 0.5}, "0 or below"),
        ({"no_speech_threshold": 1.2}, "probability"),
        ({"logprob_threshold": None}, "log-probability threshold"),
        ({"compression_ratio_threshold": 0}, "above 0"),
    ],
)
def test_bad_options_end_with_one_clear_line(fields, words):
    with pytest.raises(UserError, match=words) as info:
        DecodingOptions(**fields)
    assert "\n" not in str(info.value)


def test_defaults_and_temperature_ramp_are_openai_whispers():
    d = DecodingOptions()
    assert (d.beam_size, d.compression_ratio_threshold, d.logprob_threshold, d.no_speech_threshold) == (
        1,
        2.4,
        -1.0,
        0.6,
    )
    assert d.condition_on_previous_text and d.temperature == FALLBACK_TEMPERATURES
    assert DecodingOptions.from_temperature(0.0, 0.2).temperature == FALLBACK_TEMPERATURES
    assert DecodingOptions.from_temperature(0.5, 0.25).temperature == (0.5, 0.75, 1.0)
    assert DecodingOptions.from_temperature(0.3, 0).temperature == (0.3,)
    assert d.starting_at(0.6).temperature == (0.6, 0.8, 1.0)
    assert DecodingOptions.greedy().starting_at(0.4).temperature == (0.4,)  # no fallback stays none
    assert d.name == "robust" and DecodingOptions.greedy().name == "greedy"
    assert compression_ratio("oneself " * 30) > 2.4 > compression_ratio("a plain sentence of ordinary words")


def test_faster_whisper_takes_every_mapped_argument():
    faster_whisper = pytest.importorskip("faster_whisper")
    accepted = inspect.signature(faster_whisper.WhisperModel.transcribe).parameters
    kwargs = DecodingOptions().faster_whisper_kwargs()
    assert set(kwargs) <= set(accepted) and kwargs["log_prob_threshold"] == -1.0


def test_a_runaway_falls_back_where_greedy_loops(loaded, audio):
    (greedy,) = decode(loaded, audio, DecodingOptions.greedy())
    assert has_loop(greedy.text) and greedy.compression_ratio > 2.4 and greedy.temperature == 0.0
    robust = decode(loaded, audio, DecodingOptions())
    assert robust and all(s.temperature > 0 for s in robust)  # the greedy window was rejected
    assert [s.text for s in decode(loaded, audio, DecodingOptions())] == [s.text for s in robust]  # seeded
    model = loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else loaded.model
    assert "_need_fallback" not in vars(model) and "_retrieve_compression_ratio" not in vars(model)


def test_without_thresholds_the_loop_is_kept(loaded, audio):
    """The fallback is what changes the text: the same ramp with every check off keeps T=0."""
    off = DecodingOptions(compression_ratio_threshold=None, logprob_threshold=None, no_speech_threshold=None)
    segments = decode(loaded, audio, off)
    assert all(s.temperature == 0.0 for s in segments) and has_loop(" ".join(s.text for s in segments))


def test_beam_size_and_condition_flag_reach_generate(loaded, audio, monkeypatch):
    seen = []
    original = loaded.model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(loaded.model, "generate", spy)
    beams = decode(loaded, audio, DecodingOptions(beam_size=3, condition_on_previous_text=False))
    assert beams and seen[-1]["num_beams"] == 3 and seen[-1]["condition_on_prev_tokens"] is False
    decode(loaded, audio, DecodingOptions())
    assert "num_beams" not in seen[-1] and seen[-1]["condition_on_prev_tokens"] is True
    assert seen[-1]["temperature"] == FALLBACK_TEMPERATURES and seen[-1]["compression_ratio_threshold"] == 2.4


def test_cli_flags_build_the_options_once():
    from whisper_tune.cli import _decoding_options, build_parser

    parse = build_parser().parse_args
    args = parse(
        [
            "transcribe",
            "x.wav",
            "--beam-size",
            "5",
            "--no-speech-threshold",
            "none",
            "--no-condition-on-previous-text",
            "--temperature-increment-on-fallback",
            "0.5",
        ]
    )
    options = _decoding_options(args)
    assert (options.beam_size, options.no_speech_threshold, options.condition_on_previous_text) == (5, None, False)
    assert options.temperature == (0.0, 0.5, 1.0) and options.logprob_threshold == -1.0
    assert _decoding_options(parse(["api", "--model", "m"])) == DecodingOptions()


def test_cli_refuses_bad_decoding_in_one_line(capsys):
    from whisper_tune.cli import main

    assert main(["transcribe", "nothing.wav", "--beam-size", "0"]) == 2
    assert main(["evaluate", "--model", "m", "--data", "demo", "--beam-size", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "beam size" in err[0] and "--decoding robust" in err[1]


def test_api_verbose_json_reports_the_decoders_scores(loaded, audio, tmp_path):
    pytest.importorskip("fastapi")
    import soundfile as sf
    from fastapi.testclient import TestClient

    from whisper_tune.api import build_app
    from whisper_tune.inference import TransformersEngine

    engine = TransformersEngine(loaded.model, loaded.processor, "mr", name="tiny", max_new_tokens=NEW_TOKENS)
    client = TestClient(build_app(engine, model_id="tiny"))
    sf.write(tmp_path / "a.wav", audio, 16000)

    def post(**fields):
        with open(tmp_path / "a.wav", "rb") as f:
            data = {"model": "tiny", "response_format": "verbose_json", **fields}
            return client.post("/v1/audio/transcriptions", files={"file": f}, data=data)

    body = post().json()
    ((direct, _),) = engine.transcribe([audio], decoding=DecodingOptions())  # what transcribe gives
    got = body["segments"]
    assert [(s["avg_logprob"], s["compression_ratio"], s["no_speech_prob"], s["temperature"]) for s in got] == [
        (d.avg_logprob, d.compression_ratio, d.no_speech_prob, d.temperature) for d in direct
    ]
    assert all(s["avg_logprob"] < 0 and s["compression_ratio"] > 0 and 0 <= s["no_speech_prob"] <= 1 for s in got)
    greedy = post(temperature="0", compression_ratio_threshold="100", logprob_threshold="-100").json()
    assert all(s["temperature"] == 0.0 for s in greedy["segments"])  # thresholds a request sets are used
    bad = post(beam_size="0")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "beam_size"


def test_evaluate_robust_decodes_a_batch_whose_clips_fall_back_differently(loaded, audio):
    """A batch where one clip falls back and one may not: transformers must not be asked to
    stack outputs of different lengths; the greedy default stays the fast decoder."""
    from datasets import Dataset

    from whisper_tune.evaluation import decode_dataset, summarize
    from whisper_tune.inference import TransformersEngine

    clips = [audio, np.zeros(16000, dtype=np.float32)]
    data = Dataset.from_dict({"id": ["a", "b"], "text": ["x y", "z"], "audio": clips, "duration": [2.0, 1.0]})
    engine = TransformersEngine(loaded.model, loaded.processor, "mr")
    result = decode_dataset(engine, data, max_new_tokens=NEW_TOKENS, decoding=DecodingOptions())
    assert len(result.hypotheses) == 2 and all(isinstance(h, str) for h in result.hypotheses)
    assert summarize(result, {}, DecodingOptions())[0].decoding["name"] == "robust"
