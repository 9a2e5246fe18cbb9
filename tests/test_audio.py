import shutil
import subprocess

import numpy as np
import pytest
from conftest import tone, write_tone

from whisper_tune.audio import SAMPLE_RATE, AudioError, load_audio, resample, rms_db


def test_mp3_48k_resampled_to_16k_keeps_duration(tmp_path):
    path = write_tone(tmp_path / "a.mp3", seconds=3.0, sr=48000)
    audio = load_audio(path)
    assert audio.dtype == np.float32
    # MP3 frames add at most one frame (1152 samples at 48 kHz = 24 ms) of padding
    assert abs(len(audio) / SAMPLE_RATE - 3.0) < 0.03


@pytest.mark.parametrize("suffix, sr", [(".wav", 16000), (".wav", 44100), (".flac", 22050), (".ogg", 48000)])
def test_formats_and_rates(tmp_path, suffix, sr):
    path = write_tone(tmp_path / f"a{suffix}", seconds=2.0, sr=sr)
    audio = load_audio(path)
    assert abs(len(audio) - 2 * SAMPLE_RATE) <= 2


def test_resampled_tone_keeps_its_pitch(tmp_path):
    audio = load_audio(write_tone(tmp_path / "a.wav", seconds=1.0, sr=44100, freq=1000.0))
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(audio) - 1000.0) < 2.0


def test_stereo_is_averaged_to_mono(tmp_path):
    path = write_tone(tmp_path / "s.wav", seconds=1.0, sr=16000, channels=2, amplitude=0.8)
    audio = load_audio(path)
    assert audio.ndim == 1
    assert np.allclose(audio, tone(1.0, 16000, amplitude=0.4), atol=1e-4)


def test_bytes_decode_like_paths(tmp_path):
    path = write_tone(tmp_path / "a.flac", seconds=1.0, sr=16000)
    assert np.array_equal(load_audio(path.read_bytes()), load_audio(path))


def test_missing_and_undecodable(tmp_path):
    with pytest.raises(AudioError) as e:
        load_audio(tmp_path / "nope.mp3")
    assert e.value.reason == "missing"
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioError) as e:
        load_audio(bad)
    assert e.value.reason == "undecodable"


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_ffmpeg_fallback_for_m4a(tmp_path):
    src = write_tone(tmp_path / "a.wav", seconds=2.0, sr=44100)
    m4a = tmp_path / "a.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(src), "-c:a", "aac", str(m4a)], check=True)
    audio = load_audio(m4a)
    assert abs(len(audio) / SAMPLE_RATE - 2.0) < 0.1
    assert rms_db(audio) > -10


def test_levels():
    assert rms_db(np.zeros(100, np.float32)) == float("-inf")
    assert rms_db(np.zeros(0, np.float32)) == float("-inf")
    assert abs(rms_db(tone(1.0, 16000, amplitude=1.0)) - (-3.0103)) < 0.01


def test_resample_noop_keeps_samples():
    x = tone(0.5, 16000)
    assert np.array_equal(resample(x, 16000), x)


def _reason(source) -> tuple[str, str]:
    with pytest.raises(AudioError) as e:
        load_audio(source)
    return e.value.reason, e.value.detail


def test_folder_named_like_a_clip_is_not_a_file(tmp_path):
    (tmp_path / "x.mp3").mkdir()
    assert _reason(tmp_path / "x.mp3") == ("not_a_file", f"{tmp_path / 'x.mp3'} is a folder, not an audio file")


def test_empty_file_and_empty_bytes(tmp_path):
    (tmp_path / "e.wav").write_bytes(b"")
    assert _reason(tmp_path / "e.wav") == ("empty", f"{tmp_path / 'e.wav'} is an empty file (0 bytes)")
    assert _reason(b"")[0] == "empty"


def test_header_only_wav_decodes_to_no_samples(tmp_path):
    import soundfile as sf

    sf.write(str(tmp_path / "h.wav"), np.zeros(0, dtype=np.float32), 16000)
    assert load_audio(tmp_path / "h.wav").size == 0  # callers reject it as "empty"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples_are_refused(tmp_path, bad):
    import soundfile as sf

    x = tone(1.0, 16000)
    x[100:200] = bad
    sf.write(str(tmp_path / "n.wav"), x, 16000, subtype="FLOAT")
    assert _reason(tmp_path / "n.wav") == ("not_finite", "audio has non-finite samples (NaN/Inf)")


def test_truncated_mp3_is_undecodable_not_a_short_clip(tmp_path):
    good = write_tone(tmp_path / "a.mp3", seconds=3.0, sr=16000).read_bytes()
    (tmp_path / "cut.mp3").write_bytes(good[: int(len(good) * 0.3)])
    reason, detail = _reason(tmp_path / "cut.mp3")
    assert reason == "undecodable" and detail.startswith("truncated: decodes to 0.") and "of the 3.0 s" in detail
    assert load_audio(good).size == 48000  # a whole file passes the same check
