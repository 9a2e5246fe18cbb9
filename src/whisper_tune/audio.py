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


def _soundfile_decode(source: AudioSource) -> tuple[np.ndarray, int]:
    import soundfile as sf

    handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    data, sr = sf.read(handle, dtype="float32", always_2d=True)
    return data.mean(axis=1), sr


def _ffmpeg_decode(source: AudioSource, sr: int) -> np.ndarray:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", "pipe:0" if isinstance(source, bytes) else str(source)]
    cmd += ["-f", "f32le", "-ac", "1", "-ar", str(sr), "pipe:1"]
    run = subprocess.run(cmd, input=source if isinstance(source, bytes) else None, capture_output=True)
    if run.returncode != 0:
        lines = run.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"ffmpeg exited with {run.returncode}")
    return np.frombuffer(run.stdout, dtype=np.float32).copy()


def resample(samples: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono float32 signal; a no-op when the rates already match."""
    if orig_sr == target_sr or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(samples, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def load_audio(source: AudioSource, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a file path or encoded bytes to mono float32 at ``sr`` Hz.

    Raises AudioError("missing" | "undecodable", ...) so callers can list the clip with
    its reason instead of crashing.
    """
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise AudioError("missing", f"no such file: {source}")
    try:
        samples, orig_sr = _soundfile_decode(source)
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
