import json

import numpy as np
import pytest
import torch
from conftest import write_tone

from whisper_tune.audio import load_audio
from whisper_tune.errors import UserError
from whisper_tune.export import export_ct2, merge, model_card
from whisper_tune.features import log_mel

PROMPT = [50258, 50320, 50359, 50363]


def _logits(model, features):
    with torch.no_grad():
        return model(input_features=features, decoder_input_ids=torch.tensor([PROMPT])).logits


@pytest.fixture(scope="module")
def merged(tiny_adapter, tmp_path_factory):
    return merge(None, str(tiny_adapter), tmp_path_factory.mktemp("m") / "merged", dtype="float32")


@pytest.fixture(scope="module")
def features(processor, small_corpus):
    clip = sorted((small_corpus / "clips").glob("*.mp3"))[0]
    return log_mel(processor.feature_extractor, [load_audio(clip)])


def test_merged_logits_equal_base_plus_adapter(tiny_model_dir, tiny_adapter, merged, features):
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    base = WhisperForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    plain = _logits(base, features)
    unmerged = PeftModel.from_pretrained(
        WhisperForConditionalGeneration.from_pretrained(tiny_model_dir), tiny_adapter
    ).eval()
    merged_model = WhisperForConditionalGeneration.from_pretrained(merged).eval()
    assert torch.allclose(_logits(merged_model, features), _logits(unmerged, features), atol=1e-4)
    assert not torch.allclose(_logits(merged_model, features), plain, atol=1e-2)  # the adapter did something


def test_merged_folder_is_a_plain_checkpoint(merged, tmp_path):
    from transformers import pipeline

    gc = json.loads((merged / "generation_config.json").read_text())
    assert gc["language"] == "mr" and gc["task"] == "transcribe" and gc.get("forced_decoder_ids") is None
    assert (merged / "preprocessor_config.json").exists() and "pipeline(" in (merged / "README.md").read_text()
    asr = pipeline("automatic-speech-recognition", model=str(merged), device="cpu")
    out = asr(str(write_tone(tmp_path / "a.wav", seconds=2.0)), generate_kwargs={"max_new_tokens": 5})
    assert isinstance(out["text"], str)


def test_ct2_export_computes_what_transformers_computes(merged, features, tmp_path):
    """float32 export: the encoder output and the first decoding step's logits agree with
    transformers to rounding, so the conversion maps every weight to the right place."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from transformers import WhisperForConditionalGeneration

    out = export_ct2(merged, tmp_path / "ct2", quantization="float32")
    assert {"model.bin", "tokenizer.json", "preprocessor_config.json", "config.json"} <= {p.name for p in out.iterdir()}
    model = WhisperForConditionalGeneration.from_pretrained(merged).eval()
    ct2 = ctranslate2.models.Whisper(str(out), device="cpu", compute_type="float32")
    storage = ctranslate2.StorageView.from_array(features.numpy())
    with torch.no_grad():
        encoded = model.model.encoder(features).last_hidden_state.numpy()
    assert np.abs(np.array(ct2.encode(storage, to_cpu=True)) - encoded).max() < 1e-4
    result = ct2.generate(
        storage, [PROMPT], beam_size=1, max_length=5, suppress_blank=False, suppress_tokens=[], return_logits_vocab=True
    )
    first_step = np.array(result[0].logits[0])[0]
    assert np.abs(first_step - _logits(model, features)[0, -1].numpy()).max() < 1e-3


def test_faster_whisper_transcribes_the_export(tiny_model_dir, tiny_adapter, tmp_path):
    faster_whisper = pytest.importorskip("faster_whisper")
    out = export_ct2(str(tiny_model_dir), tmp_path / "ct2", quantization="int8", adapter=str(tiny_adapter))
    model = faster_whisper.WhisperModel(str(out), device="cpu", compute_type="int8")
    segments, info = model.transcribe(
        str(write_tone(tmp_path / "a.wav", seconds=3.0)),
        language="mr",
        beam_size=1,
        without_timestamps=True,
        max_new_tokens=5,
    )
    texts = [s.text for s in segments]
    assert info.language == "mr" and all(isinstance(t, str) for t in texts)


def test_export_errors(tmp_path):
    with pytest.raises(UserError, match="unknown CTranslate2 quantization"):
        export_ct2(tmp_path, tmp_path / "o", quantization="int3")
    with pytest.raises(UserError, match="no config.json"):
        export_ct2(tmp_path, tmp_path / "o")
    with pytest.raises(UserError, match="not a LoRA adapter folder"):
        merge(None, str(tmp_path), tmp_path / "m")


def test_model_card_from_a_run(tmp_path):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "run.json").write_text(
        json.dumps(
            {
                "steps": 1473,
                "best": {"step": 1000, "wer": 36.1, "cer": 12.5},
                "config": {
                    "model": {"quantization": "int8"},
                    "lora": {"r": 32, "alpha": 64, "dropout": 0.05, "targets": "qv"},
                    "data": {"source": "cv:mr", "train_split": "train+dev", "eval_split": "test"},
                    "train": {"batch_size": 8, "learning_rate": 0.001, "warmup_steps": 50},
                },
            }
        )
    )
    card = model_card("adapter", "openai/whisper-large-v2", "mr", "transcribe", run / "adapter")
    assert card.startswith("---\nlibrary_name: peft\nbase_model: openai/whisper-large-v2")
    assert "language: [mr]" in card and "| WER (%) | 36.10 |" in card and "r=32, alpha=64" in card
    assert "PeftModel.from_pretrained" in card
    bare = model_card("merged", "base", None, "transcribe")
    assert "Not measured yet" in bare and "library_name: transformers" in bare


def test_transcribe_runs_a_ct2_export_on_faster_whisper(tiny_model_dir, tiny_adapter, tmp_path, capsys):
    pytest.importorskip("faster_whisper")

    from whisper_tune.cli import main

    ct2 = export_ct2(str(tiny_model_dir), tmp_path / "ct2", quantization="int8", adapter=str(tiny_adapter))
    tone = write_tone(tmp_path / "tone.wav", seconds=3.0)
    (tmp_path / "broken.mp3").write_bytes(b"not audio")
    out = tmp_path / "out"
    args = ["transcribe", str(tone), str(tmp_path / "broken.mp3"), "--model", str(ct2), "--language", "mr"]
    assert main([*args, "--out", str(out), "--format", "json", "txt"]) == 2  # the broken file is reported
    err = capsys.readouterr().err
    assert "engine: faster-whisper" in err and "broken.mp3" in err
    record = json.loads((out / "tone.json").read_text(encoding="utf-8"))
    assert record["language"] == "mr" and record["duration"] == pytest.approx(3.0, abs=0.01)
    assert (out / "tone.txt").exists() and not (out / "broken.txt").exists()
    assert main([*args[:2], "--model", str(ct2), "--adapter", str(tiny_adapter)]) == 2
    assert "merged already" in capsys.readouterr().err
