"""What an upload to ``serve`` or ``api`` may be, checked before the model sees it: a size
limit, a duration limit read from the header where the format allows (a long file is refused
before all of it is decoded), then the decoded audio's own length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .audio import AudioError, duration, load_audio, probe_duration


@dataclass
class Limits:
    """What one upload may be."""

    max_mb: float = 25.0
    max_seconds: float = 600.0


class UploadRejected(ValueError):
    """An upload the app will not transcribe; the message is shown to the user as is.
    ``too_large`` says the file or its decoded size is over the limits (HTTP 413 in the API),
    not that it is long or unreadable (400)."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


def check_upload(path: str | Path | None, limits: Limits):
    """The decoded 16 kHz audio of an upload, or UploadRejected saying what is wrong. The
    decoder reads the header first and stops once the audio passes ``limits.max_seconds``."""
    if not path:
        raise UploadRejected("no audio: upload a file or record from the microphone first")
    size_mb = Path(path).stat().st_size / 2**20
    if size_mb > limits.max_mb:
        raise UploadRejected(
            f"the file is {size_mb:.1f} MB; this app takes at most {limits.max_mb:g} MB", too_large=True
        )
    probed = probe_duration(path)  # refuse a long file before decoding any of it
    if probed is not None and probed > limits.max_seconds + 1:
        raise UploadRejected(f"the audio is {probed:.0f} s long; this app takes at most {limits.max_seconds:g} s")
    try:
        audio = load_audio(path, max_seconds=limits.max_seconds)
    except AudioError as e:
        if e.reason == "too_long":
            raise UploadRejected(f"{e.detail.split(';')[0]}; this app takes at most {limits.max_seconds:g} s") from None
        if e.reason == "too_large":
            raise UploadRejected(f"this audio is too large to decode: {e.detail}", too_large=True) from None
        raise UploadRejected(f"cannot read this audio: {e.detail}") from None
    seconds = duration(audio)
    if seconds > limits.max_seconds:
        raise UploadRejected(f"the audio is {seconds:.0f} s long; this app takes at most {limits.max_seconds:g} s")
    if audio.size == 0:
        raise UploadRejected("the file holds no audio samples")
    return audio
