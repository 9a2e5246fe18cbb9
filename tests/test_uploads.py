"""Upload limits shared by the web app and the API server, checked before the model sees a file."""

import pytest
from conftest import write_tone

from whisper_tune.uploads import Limits, UploadRejected, check_upload


def test_uploads_over_the_limits_are_refused_with_the_reason(tmp_path):
    tone = write_tone(tmp_path / "tone.wav", seconds=3.0)
    assert check_upload(tone, Limits()).shape == (48000,)
    with pytest.raises(UploadRejected, match=r"3 s long; this app takes at most 2 s"):
        check_upload(tone, Limits(max_seconds=2))
    with pytest.raises(UploadRejected, match=r"0.1 MB; this app takes at most 0.01 MB"):
        check_upload(tone, Limits(max_mb=0.01))
    (tmp_path / "bad.mp3").write_bytes(b"not audio at all")
    with pytest.raises(UploadRejected, match="cannot read this audio"):
        check_upload(tmp_path / "bad.mp3", Limits())
    with pytest.raises(UploadRejected, match="upload a file or record"):
        check_upload(None, Limits())


def test_a_long_upload_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    """A 7 MB, 2-hour MP3 once cost 630 MB of memory before the limit was checked: the length
    now comes from the file header, and the audio is never decoded."""
    import whisper_tune.uploads as uploads

    def no_decoding(path):
        raise AssertionError("decoded a file that its header already shows is too long")

    long_mp3 = write_tone(tmp_path / "long.mp3", seconds=5.0, sr=16000)
    monkeypatch.setattr(uploads, "load_audio", no_decoding)
    with pytest.raises(UploadRejected, match=r"5 s long; this app takes at most 2 s"):
        check_upload(long_mp3, Limits(max_seconds=2))


def test_a_bomb_is_too_large_and_a_long_decode_stops_at_the_limit(tmp_path):
    from test_audio import write_silence

    bomb = write_silence(tmp_path / "bomb.flac", seconds=5, sr=384000, channels=8)
    with pytest.raises(UploadRejected, match=r"too large to decode: 8 channels at 384 kHz") as e:
        check_upload(bomb, Limits())
    assert e.value.too_large  # the API answers 413
    long = write_tone(tmp_path / "long.flac", seconds=30.0, sr=8000)
    with pytest.raises(UploadRejected, match=r"^the audio is 30 s long; this app takes at most 20 s$") as e:
        check_upload(long, Limits(max_seconds=20))
    assert not e.value.too_large
