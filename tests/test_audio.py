import shutil
import subprocess

import numpy as np
import pytest
from conftest import tone, write_tone

from whisper_tune.audio import PAUSE_DB, SAMPLE_RATE, AudioError, join_with_pauses, load_audio, resample, rms_db


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


def write_silence(path, seconds: float, sr: int, channels: int):
    """A FLAC of digital silence written in blocks: a few KB per minute however wide it is
    (the "bomb" of issue 29: 120 s at 384 kHz x 8 channels was 57 KB and 1.5 GB decoded)."""
    import soundfile as sf

    block = np.zeros((sr, channels), dtype=np.int16)
    with sf.SoundFile(str(path), "w", samplerate=sr, channels=channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(int(seconds)):
            f.write(block)
    return path


def test_a_flac_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    import whisper_tune.audio as audio

    bomb = write_silence(tmp_path / "bomb.flac", seconds=10, sr=384000, channels=8)
    assert bomb.stat().st_size < 200_000
    monkeypatch.setattr(audio, "_Resampler", None)  # nothing past the header is decoded
    assert _reason(bomb) == ("too_large", "8 channels at 384 kHz; at most 8 channels at 192 kHz are read")


def test_memory_follows_the_16k_mono_output_not_the_files_width(tmp_path):
    """20 s of 8 channels at 96 kHz is 61 MB as float32; decoded in blocks, each down-mixed
    and resampled before the next, the peak is one 8 MB block plus the 1.3 MB output."""
    import tracemalloc

    wide = write_silence(tmp_path / "wide.flac", seconds=20, sr=96000, channels=8)
    tracemalloc.start()
    try:
        audio = load_audio(wide)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert audio.shape == (20 * SAMPLE_RATE,) and not audio.any()
    assert peak < 24 * 2**20, f"{peak / 2**20:.0f} MB"


def test_max_seconds_stops_at_the_header_or_while_decoding(tmp_path, monkeypatch):
    import whisper_tune.audio as audio

    long = write_tone(tmp_path / "long.flac", seconds=30.0, sr=8000)
    assert load_audio(long, max_seconds=29.5).size == 30 * SAMPLE_RATE  # one second of grace
    assert _reason_with(long, max_seconds=10) == ("too_long", "the audio is 30 s long; at most 10 s are read")
    monkeypatch.setattr(audio, "_check_header", lambda *args: None)  # a header that does not tell
    assert _reason_with(long, max_seconds=10) == ("too_long", "the audio is more than 11 s long; at most 10 s are read")


def _reason_with(source, **kw) -> tuple[str, str]:
    with pytest.raises(AudioError) as e:
        load_audio(source, **kw)
    return e.value.reason, e.value.detail


def _mp3(path, seconds: float, freq: int):
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"sine=f={freq}:d={seconds}:r=48000"]
    subprocess.run([*cmd, "-b:a", "64k", str(path)], check=True)
    return path.read_bytes()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_a_concatenated_mp3_is_read_whole_not_cut_to_its_first_part(tmp_path, monkeypatch):
    """``cat short.mp3 long.mp3``: libsndfile reads the first stream's header and stops after
    1 s; its 500 KB say otherwise, so ffmpeg decodes the whole (transcribe, api and prepare
    all read audio here)."""
    import soundfile as sf

    import whisper_tune.audio as audio

    joined = tmp_path / "joined.mp3"
    joined.write_bytes(_mp3(tmp_path / "a.mp3", 1, 440) + _mp3(tmp_path / "b.mp3", 60, 300))
    assert sf.info(str(joined)).duration == pytest.approx(1.0, abs=0.05)  # what soundfile alone reads
    assert len(load_audio(joined)) / SAMPLE_RATE == pytest.approx(61.0, abs=0.2)
    assert _reason_with(joined, max_seconds=20)[0] == "too_long"
    assert len(load_audio(tmp_path / "b.mp3")) == 60 * SAMPLE_RATE  # one stream: soundfile, as before
    monkeypatch.setattr(audio.shutil, "which", lambda name: None)
    reason, detail = _reason(joined)
    assert reason == "undecodable" and "far more than 1.0 s of audio needs" in detail and "install ffmpeg" in detail


def test_joined_clips_lie_whole_at_their_starts_with_quiet_noise_between():
    """The card's long files and preserve's joined samples: each clip exact at its start,
    pauses of noise at PAUSE_DB (a room, not digital zeros), seeded."""
    clips = [tone(0.5, SAMPLE_RATE), tone(0.25, SAMPLE_RATE, 330.0), tone(0.1, SAMPLE_RATE)]
    gaps = [0, 4000, 2000]
    audio, starts = join_with_pauses(clips, gaps, np.random.default_rng(0))
    assert audio.dtype == np.float32 and audio.size == sum(c.size for c in clips) + 6000
    assert starts == [0, clips[0].size + 4000, clips[0].size + clips[1].size + 6000]
    for start, clip in zip(starts, clips):
        assert np.array_equal(audio[start : start + clip.size], clip.astype(np.float32))
    pause = audio[clips[0].size : starts[1]]
    assert np.all(pause != 0) and abs(rms_db(pause) - PAUSE_DB) < 1.0
    again, _ = join_with_pauses(clips, gaps, np.random.default_rng(0))
    assert np.array_equal(audio, again)
