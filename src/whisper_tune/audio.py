"""Audio in: decode any common file, down-mix to mono, resample to 16 kHz.

soundfile (libsndfile >= 1.1) decodes WAV, FLAC, OGG/Vorbis/Opus and MP3 in-process,
which covers Common Voice's 48 kHz MP3 without FFmpeg. Anything it cannot read (M4A,
WebM, video containers) goes through the ``ffmpeg`` command when it is installed.
Resampling uses soxr's high-quality mode: the same filter in training and inference, so
the model never sees a front end at test time that it did not see in training.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000  # Hz, what every Whisper model expects
CHUNK_SECONDS = 30  # one Whisper input window
N_SAMPLES = SAMPLE_RATE * CHUNK_SECONDS  # 480000 samples in a 30 s window
SILENCE_DB = -60.0  # RMS below this (dBFS) counts as silence

AudioSource = str | Path | bytes


class AudioError(Exception):
    """A clip that cannot be used; ``reason`` is a short machine-readable word."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _describe(source: AudioSource) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, bytes) else str(source)


TRUNCATED_FRACTION = 0.9  # a decode this much shorter than the header's length (and by > 0.5 s) is a cut file
NOT_FINITE = "audio has non-finite samples (NaN/Inf)"


def _soundfile_decode(source: AudioSource) -> tuple[np.ndarray, int]:
    import soundfile as sf

    handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    with sf.SoundFile(handle) as f:
        data, sr = f.read(dtype="float32", always_2d=True), f.samplerate
        _check_complete(len(data), f.frames, sr)
    return data.mean(axis=1), sr


def _check_complete(decoded: int, stated: int, sr: int) -> None:
    """Refuse a cut file: a truncated MP3 decodes without error up to its cut, and training on
    its first seconds against the whole transcript teaches the model wrong words."""
    if stated > 0 and decoded < TRUNCATED_FRACTION * stated and (stated - decoded) / sr > 0.5:
        raise AudioError(
            "undecodable", f"truncated: decodes to {decoded / sr:.1f} s of the {stated / sr:.1f} s its header states"
        )


def _check_file(source: AudioSource) -> None:
    """A path that is a file with bytes in it, each other case with its own reason."""
    path = Path(source)
    if path.is_dir():
        raise AudioError("not_a_file", f"{source} is a folder, not an audio file")
    if not path.exists():
        raise AudioError("missing", f"no such file: {source}")
    if not path.is_file():
        raise AudioError("not_a_file", f"{source} is not a regular file (a device, pipe or socket)")
    if path.stat().st_size == 0:
        raise AudioError("empty", f"{source} is an empty file (0 bytes)")


def check_finite(samples: np.ndarray) -> np.ndarray:
    """``samples``, or AudioError("not_finite") when any is NaN/Inf: such audio makes NaN
    features, which Whisper decodes as "!!!!" and which poison a training step."""
    if not np.isfinite(samples).all():
        raise AudioError("not_finite", NOT_FINITE)
    return samples


def _ffmpeg_decode(source: AudioSource, sr: int) -> np.ndarray:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", "pipe:0" if isinstance(source, bytes) else str(source)]
    cmd += ["-f", "f32le", "-ac", "1", "-ar", str(sr), "pipe:1"]
    run = subprocess.run(cmd, input=source if isinstance(source, bytes) else None, capture_output=True)
    if run.returncode != 0:
        lines = run.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"ffmpeg exited with {run.returncode}")
    return np.frombuffer(run.stdout, dtype=np.float32).copy()


def resample(samples: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE, quality: str = "HQ") -> np.ndarray:
    """Resample a mono float32 signal; a no-op when the rates already match. ``quality`` is
    soxr's: HQ for audio we read, MQ where speed matters more (training augmentation)."""
    if orig_sr == target_sr or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(samples, orig_sr, target_sr, quality=quality).astype(np.float32, copy=False)


def load_audio(source: AudioSource, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a file path or encoded bytes to mono float32 at ``sr`` Hz.

    Raises AudioError("missing" | "not_a_file" | "empty" | "undecodable" | "not_finite", ...)
    so callers can list the clip with its reason instead of crashing. A file whose decoded
    length falls well short of its header's (a truncated MP3) is "undecodable".
    """
    if isinstance(source, bytes) and not source:
        raise AudioError("empty", "no bytes of audio")
    if not isinstance(source, bytes):
        _check_file(source)
    return check_finite(_decode(source, sr))


def _decode(source: AudioSource, sr: int) -> np.ndarray:
    """libsndfile first, then ffmpeg for the formats it lacks."""
    try:
        samples, orig_sr = _soundfile_decode(source)
    except AudioError:
        raise
    except Exception as first:  # libsndfile raises several types for unknown formats
        if shutil.which("ffmpeg") is None:
            raise AudioError("undecodable", f"not a readable audio file ({first})") from None
        try:
            return _ffmpeg_decode(source, sr)
        except Exception as second:  # ffmpeg's reason is the clearer one (libsndfile's misleads)
            raise AudioError("undecodable", f"not a readable audio file (ffmpeg: {second})") from None
    return resample(samples, orig_sr, sr)


def probe_duration(path: str | Path) -> float | None:
    """A file's length in seconds from its header (libsndfile, else ffprobe), without
    decoding it: lets a server refuse a 3-hour upload before spending memory on it.
    None when neither can tell (the decoder then has the last word)."""
    try:
        import soundfile as sf

        info = sf.info(str(path))
        if info.samplerate > 0 and info.frames > 0:
            return info.frames / info.samplerate
    except Exception:  # noqa: BLE001 - libsndfile raises several types for unknown formats
        pass
    if shutil.which("ffprobe") is None:
        return None
    cmd = ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return float(run.stdout.strip()) if run.returncode == 0 else None
    except (ValueError, subprocess.TimeoutExpired):
        return None


def rms_db(samples: np.ndarray) -> float:
    """Root-mean-square level in dBFS (-inf for digital silence)."""
    if samples.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20 * np.log10(rms) if rms > 0 else float("-inf")


def duration(samples: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Length in seconds."""
    return samples.shape[-1] / sr
