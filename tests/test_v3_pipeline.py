"""large-v3 and large-v3-turbo shapes through the whole pipeline, on a tiny random model of
that shape (128 mel bins, 51866 tokens with <|yue|>, a decoder shallower than the encoder):
train, resume, evaluate with the fast decoder, merge, export-ct2 and faster-whisper, import-ct2
back, each with the v3 token ids. A stage fed 80-bin features fails at the model's first
convolution, so every stage that runs here computed 128 bins; a mismatched processor is
refused before any work."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import write_tone

from whisper_tune.config import load_train_config
from whisper_tune.errors import UserError

V3_PREFIX = [50258, 50320, 50360, 50364]  # <|startoftranscript|><|mr|><|transcribe|><|notimestamps|> in v3


@pytest.fixture(scope="module")
def v3_dir(tmp_path_factory):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from whisper_tune.modeling import ARCHITECTURES, architecture_config
    from whisper_tune.processor import offline_processor_dir

    shape = ARCHITECTURES["tiny-test-v3"]
    torch.manual_seed(3)
    model = WhisperForConditionalGeneration(architecture_config("tiny-test-v3"))
    model.model.decoder.embed_tokens.weight.data.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("tiny-v3")
    model.save_pretrained(out)
    WhisperProcessor.from_pretrained(offline_processor_dir(shape.mel_bins, shape.languages)).save_pretrained(out)
    assert model.config.num_mel_bins == 128 and model.config.vocab_size == 51866
    assert model.config.decoder_layers < model.config.encoder_layers
    return out


def _cfg(model_dir, corpus, out, **extra):
    values = {
        "model.base": model_dir,
        "model.quantization": "int8-wo",
        "model.gradient_checkpointing": "false",
        "data.source": corpus,
        "data.train_split": "train",
        "data.eval_split": "test",
        "train.output_dir": out,
        "train.batch_size": 4,
        "train.max_steps": 4,
        "train.num_workers": 0,
        "train.save_every": 2,
        "train.warmup_steps": 1,
        "eval.every": 2,
        "eval.max_new_tokens": 4,
        "lora.r": 4,
        "lora.alpha": 8,
    } | extra
    return load_train_config(None, [f"{k}={v}" for k, v in values.items()])


def test_v3_shape_trains_resumes_evaluates_merges_and_exports(v3_dir, small_corpus, tmp_path):
    from safetensors.torch import load_file

    from whisper_tune.evaluation import evaluate
    from whisper_tune.export import export_ct2, merge
    from whisper_tune.prepare import load_prepared
    from whisper_tune.training import train

    full = train(_cfg(v3_dir, small_corpus, tmp_path / "full"), progress=False)
    split = _cfg(v3_dir, small_corpus, tmp_path / "split")
    train(split, stop_after=2, progress=False)
    resumed = train(split, resume=True, progress=False)
    a, b = (load_file(str(p / "adapter_model.safetensors")) for p in (full.adapter_dir, resumed.adapter_dir))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    labels = load_prepared(tmp_path / "full" / "prepared" / "train")[0]["labels"]
    assert list(labels[:4]) == V3_PREFIX

    summary, _ = evaluate(None, str(full.adapter_dir), split.data, "test", tmp_path / "eval", max_new_tokens=4)
    assert summary.n > 0 and summary.model["merged"]

    merged = merge(None, str(full.adapter_dir), tmp_path / "merged")
    config = json.loads((merged / "config.json").read_text())
    generation = json.loads((merged / "generation_config.json").read_text())
    assert (config["num_mel_bins"], config["vocab_size"]) == (128, 51866)
    assert generation["task_to_id"]["transcribe"] == 50360 and generation["lang_to_id"]["<|yue|>"] == 50358

    faster_whisper = pytest.importorskip("faster_whisper")
    ct2 = export_ct2(str(merged), tmp_path / "ct2", quantization="float32")
    assert json.loads((ct2 / "preprocessor_config.json").read_text())["feature_size"] == 128
    engine = faster_whisper.WhisperModel(str(ct2), device="cpu", compute_type="float32")
    assert engine.feature_extractor.mel_filters.shape[0] == 128  # faster-whisper computes 128 bins too
    segments, info = engine.transcribe(
        str(write_tone(tmp_path / "t.wav", seconds=2.0)), language="mr", beam_size=1, max_new_tokens=4
    )
    list(segments)
    assert info.language == "mr"

    from whisper_tune.import_ct2 import import_ct2

    back = import_ct2(str(ct2), tmp_path / "back", dtype="float32")
    again = json.loads((back / "config.json").read_text())
    assert (again["num_mel_bins"], again["vocab_size"], again["decoder_layers"]) == (128, 51866, 1)
    from transformers import WhisperForConditionalGeneration

    ours = WhisperForConditionalGeneration.from_pretrained(merged, dtype=torch.float32).state_dict()
    theirs = WhisperForConditionalGeneration.from_pretrained(back, dtype=torch.float32).state_dict()
    for name, tensor in ours.items():
        if name in theirs:
            assert np.allclose(tensor.numpy(), theirs[name].numpy(), atol=1e-3), name


def test_a_processor_of_another_generation_is_refused_before_work(v3_dir, small_corpus, tmp_path):
    """An 80-bin v2 processor beside a 128-bin v3 model: one line, before any data work."""
    from transformers import WhisperProcessor

    from whisper_tune.modeling import load_for_inference
    from whisper_tune.processor import offline_processor_dir
    from whisper_tune.training import train

    wrong = tmp_path / "wrong"
    shutil.copytree(v3_dir, wrong)
    WhisperProcessor.from_pretrained(offline_processor_dir(80, 99)).save_pretrained(wrong)
    with pytest.raises(UserError, match="computes 80 mel bins, the model takes 128"):
        load_for_inference(str(wrong), None, torch.device("cpu"))
    with pytest.raises(UserError, match="computes 80 mel bins, the model takes 128"):
        train(_cfg(wrong, small_corpus, tmp_path / "run"), progress=False)
    assert not (tmp_path / "run" / "prepared").exists()
    # a folder without a processor gets the bundled one shaped as its config says
    bare = tmp_path / "bare"
    shutil.copytree(v3_dir, bare, ignore=shutil.ignore_patterns("*token*", "*vocab*", "merges.txt", "preprocessor*"))
    loaded = load_for_inference(str(bare), None, torch.device("cpu"), language="mr")
    assert loaded.processor.feature_extractor.feature_size == 128 and len(loaded.processor.tokenizer) == 51866
