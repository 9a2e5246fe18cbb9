import numpy as np
import pytest
import soundfile as sf

from whisper_tune.audio import SAMPLE_RATE, rms_db
from whisper_tune.errors import UserError
from whisper_tune.nonspeech import (
    KINDS,
    MAX_SECONDS,
    MIN_SECONDS,
    NOISE_LEVELS_DB,
    noise_folder_clips,
    nonspeech_clip,
    nonspeech_clips,
)


@pytest.fixture(scope="module")
def clips():
    return nonspeech_clips(len(KINDS) + 3, seed=7)


def test_same_seed_same_bytes_other_seed_other_bytes(clips):
    again = nonspeech_clips(len(clips), seed=7)
    assert [c.kind for c in again] == [c.kind for c in clips]
    assert all(a.audio.tobytes() == b.audio.tobytes() for a, b in zip(again, clips))
    other = nonspeech_clips(len(clips), seed=8)
    assert [c.audio.tobytes() for c in other] != [c.audio.tobytes() for c in clips]


def test_every_kind_lengths_and_levels(clips):
    assert {c.kind for c in clips} == set(KINDS)
    for c in clips:
        assert c.audio.dtype == np.float32 and c.audio.ndim == 1
        assert c.audio.size == round(c.seconds * SAMPLE_RATE)
        assert MIN_SECONDS <= c.seconds <= MAX_SECONDS, (c.kind, c.seconds)
        assert np.isfinite(c.audio).all() and np.abs(c.audio).max() <= 1.0, c.kind
        if c.kind == "silence":
            assert not c.audio.any()
        else:  # every other kind makes a sound: a clip of zeros would test nothing new
            assert rms_db(c.audio) > min(NOISE_LEVELS_DB) - 10, c.kind


def test_noise_levels_are_the_stated_ones():
    levels = {round(rms_db(nonspeech_clip("white_noise", 5.0, seed).audio), 1) for seed in range(40)}
    assert levels == {round(db, 1) for db in NOISE_LEVELS_DB}


def test_colours_of_noise_tilt_downwards():
    """Pink and brown noise put more of their power in the low band than white noise does."""

    def low_share(kind):
        spectrum = np.abs(np.fft.rfft(nonspeech_clip(kind, 5.0, 1).audio)) ** 2
        freqs = np.fft.rfftfreq(5 * SAMPLE_RATE, 1 / SAMPLE_RATE)
        return spectrum[freqs < 500].sum() / spectrum.sum()

    assert low_share("white_noise") < low_share("pink_noise") < low_share("brown_noise")


def test_unknown_kind_is_a_user_error():
    with pytest.raises(UserError, match="unknown non-speech kind 'speech'"):
        nonspeech_clip("speech", 5.0, 0)


def test_noise_folder_cut_into_pieces(tmp_path):
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "street.wav", (0.1 * rng.normal(size=70 * SAMPLE_RATE)).astype(np.float32), SAMPLE_RATE)
    sf.write(tmp_path / "short.flac", np.zeros(2 * 44100, dtype=np.float32), 44100)
    pieces = noise_folder_clips(tmp_path, seed=3)
    assert pieces and all(p.kind == "user" and p.source.endswith("street.wav") for p in pieces)
    assert all(MIN_SECONDS <= p.seconds <= MAX_SECONDS for p in pieces)
    assert sum(p.audio.size for p in pieces) > (70 - MIN_SECONDS) * SAMPLE_RATE  # only a tail under 5 s is left
    assert [p.audio.tobytes() for p in noise_folder_clips(tmp_path, seed=3)] == [p.audio.tobytes() for p in pieces]


def test_noise_folder_bad_input_is_one_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        noise_folder_clips(tmp_path / "missing")
    with pytest.raises(UserError, match="no audio files"):
        noise_folder_clips(tmp_path)
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    with pytest.raises(UserError, match="broken.wav cannot be used"):
        noise_folder_clips(tmp_path)


def test_noise_folder_of_only_short_files_is_a_user_error(tmp_path):
    sf.write(tmp_path / "blip.wav", np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(UserError, match="shorter than 5 s"):
        noise_folder_clips(tmp_path)
