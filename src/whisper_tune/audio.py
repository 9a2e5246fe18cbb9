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
PAUSE_DB = -60.0  # RMS dBFS of the low noise in the pauses between joined clips: a quiet room, not digital zeros

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
MAX_SAMPLE_RATE = 192_000  # Hz, the highest rate recorders write; 384 kHz x 8 channels is a bomb, not speech
MAX_CHANNELS = 8  # 7.1 surround
BLOCK_BYTES = 8 << 20  # one decoded block (every channel, float32): 8 MiB, so 262144 frames of stereo
LOSSY_BYTES_PER_SECOND = 40_000  # 320 kbps, MP3's highest bitrate: more bytes per decoded second is a second stream
PCM_BYTES_PER_SAMPLE = 8  # 64-bit float, the widest sample a lossless file holds
SLACK_BYTES = 64 << 10  # headers, tags and cover art beyond the ID3v2 tag's own size
LOSSY_FORMATS = ("MP3", "MPEG", "OGG")  # soundfile's format names whose length comes from a header or first stream


def load_audio(source: AudioSource, sr: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Decode a file path or encoded bytes to mono float32 at ``sr`` Hz.

    Raises AudioError("missing" | "not_a_file" | "empty" | "undecodable" | "not_finite" |
    "too_large" | "too_long", ...) so callers can list the clip with its reason instead of
    crashing. The header is read first: a rate above ``MAX_SAMPLE_RATE`` or more than
    ``MAX_CHANNELS`` channels is "too_large", a stated length above ``max_seconds`` (+1 s)
    "too_long", both before any decoding. The file is then decoded in blocks, each down-mixed
    and resampled as it comes, so memory follows the ``sr`` Hz mono output, not the file's
    channels x rate; decoding stops as soon as the output passes ``max_seconds`` (+1 s).
    A file whose decoded length falls well short of its header's (a truncated MP3) is
    "undecodable"; one with far more bytes than its decoded length needs (``cat a.mp3 b.mp3``:
    libsndfile stops after the first stream) is decoded whole by ffmpeg.
    """
    if isinstance(source, bytes) and not source:
        raise AudioError("empty", "no bytes of audio")
    if not isinstance(source, bytes):
        _check_file(source)
    return check_finite(_decode(source, sr, max_seconds))


def _decode(source: AudioSource, sr: int, max_seconds: float | None) -> np.ndarray:
    """libsndfile first, then ffmpeg for the formats it lacks and the files it reads short."""
    try:
        samples, seconds, needed = _soundfile_decode(source, sr, max_seconds)
    except AudioError:
        raise
    except Exception as first:  # libsndfile raises several types for unknown formats
        if shutil.which("ffmpeg") is None:
            raise AudioError("undecodable", f"not a readable audio file ({first})") from None
        return _ffmpeg_or_reason(source, sr, max_seconds)
    size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
    if size <= needed:
        return samples
    if shutil.which("ffmpeg") is None:
        raise AudioError(
            "undecodable",
            f"{size} bytes is far more than {seconds:.1f} s of audio needs (several files joined into one?);"
            " install ffmpeg to read it whole",
        )
    whole = _ffmpeg_or_reason(source, sr, max_seconds)  # a concatenated MP3: the rest too
    return whole if whole.size > samples.size else samples


def _ffmpeg_or_reason(source: AudioSource, sr: int, max_seconds: float | None) -> np.ndarray:
    try:
        return _ffmpeg_decode(source, sr, max_seconds)
    except AudioError:
        raise
    except Exception as e:  # ffmpeg's reason is the clearer one (libsndfile's misleads)
        raise AudioError("undecodable", f"not a readable audio file (ffmpeg: {e})") from None


def _soundfile_decode(source: AudioSource, sr: int, max_seconds: float | None) -> tuple[np.ndarray, float, float]:
    """(mono float32 at ``sr``, the decoded seconds, the most bytes they can take), decoded
    in blocks of ``BLOCK_BYTES``: each block is down-mixed and resampled before the next."""
    import soundfile as sf

    handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    with sf.SoundFile(handle) as f:
        rate, channels, stated = f.samplerate, f.channels, f.frames
        _check_header(rate, channels, stated, max_seconds)
        limit = None if max_seconds is None else int((max_seconds + 1) * rate)
        block = max(1024, BLOCK_BYTES // (4 * channels))
        stream = _Resampler(rate, sr)
        out = _Output(min(stated, limit or stated, 3600 * rate) * sr // max(rate, 1) + 1024)
        decoded = 0
        while len(data := f.read(block, dtype="float32", always_2d=True)):
            decoded += len(data)
            if limit is not None and decoded > limit:
                raise _too_long(max_seconds, f"more than {max_seconds + 1:g} s")
            out.add(stream(data.mean(axis=1) if channels > 1 else data[:, 0]))
        out.add(stream.flush())
        lossy = f.format in LOSSY_FORMATS
    _check_complete(decoded, stated, rate)
    per_second = LOSSY_BYTES_PER_SECOND if lossy else channels * rate * PCM_BYTES_PER_SAMPLE
    needed = decoded / rate * per_second + _id3_size(source) + SLACK_BYTES
    return out.samples(), decoded / rate, needed


def _check_header(rate: int, channels: int, frames: int, max_seconds: float | None) -> None:
    """Refuse from the header alone what would cost too much to decode."""
    if rate > MAX_SAMPLE_RATE or channels > MAX_CHANNELS:
        raise AudioError(
            "too_large",
            f"{channels} channels at {rate / 1000:g} kHz; at most {MAX_CHANNELS} channels"
            f" at {MAX_SAMPLE_RATE / 1000:g} kHz are read",
        )
    if max_seconds is not None and rate > 0 and frames / rate > max_seconds + 1:
        raise _too_long(max_seconds, f"{frames / rate:.0f} s")


def _too_long(max_seconds: float, length: str) -> AudioError:
    return AudioError("too_long", f"the audio is {length} long; at most {max_seconds:g} s are read")


def _id3_size(source: AudioSource) -> int:
    """The size of a leading ID3v2 tag (cover art can be megabytes), 0 without one."""
    if isinstance(source, bytes):
        head = source[:10]
    else:
        with open(source, "rb") as f:
            head = f.read(10)
    if len(head) < 10 or head[:3] != b"ID3":
        return 0
    return 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(head[6:10]))


class _Output:
    """The output written into one array sized from the header (grown should the header
    undercount), so the decoded audio is never held twice; pages never written never count."""

    def __init__(self, expected: int):
        self.array, self.size = np.empty(max(expected, 0), np.float32), 0

    def add(self, block: np.ndarray) -> None:
        end = self.size + len(block)
        if end > len(self.array):
            grown = np.empty(max(end, 2 * len(self.array)), np.float32)
            grown[: self.size] = self.array[: self.size]
            self.array = grown
        self.array[self.size : end] = block
        self.size = end

    def samples(self) -> np.ndarray:
        return self.array[: self.size]


class _Resampler:
    """soxr's HQ filter fed block by block (the same output as one call on the whole signal)."""

    def __init__(self, orig_sr: int, target_sr: int):
        self.stream = None
        if orig_sr != target_sr:
            import soxr

            self.stream = soxr.ResampleStream(orig_sr, target_sr, 1, dtype="float32", quality="HQ")

    def __call__(self, block: np.ndarray) -> np.ndarray:
        block = np.ascontiguousarray(block, dtype=np.float32)
        return block.copy() if self.stream is None else self.stream.resample_chunk(block)

    def flush(self) -> np.ndarray:
        if self.stream is None:
            return np.zeros(0, np.float32)
        return self.stream.resample_chunk(np.zeros(0, np.float32), last=True)


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


def _ffmpeg_decode(source: AudioSource, sr: int, max_seconds: float | None = None) -> np.ndarray:
    """ffmpeg down-mixes and resamples (soxr, as above) in its own process; ``-t`` stops its
    output one second past ``max_seconds``, so a long file never fills this one."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", "pipe:0" if isinstance(source, bytes) else str(source)]
    if max_seconds is not None:
        cmd += ["-t", f"{max_seconds + 1.5:g}"]
    cmd += ["-af", "aresample=resampler=soxr", "-f", "f32le", "-ac", "1", "-ar", str(sr), "pipe:1"]
    run = subprocess.run(cmd, input=source if isinstance(source, bytes) else None, capture_output=True)
    if run.returncode != 0:
        lines = run.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"ffmpeg exited with {run.returncode}")
    samples = np.frombuffer(run.stdout, dtype=np.float32).copy()
    if max_seconds is not None and samples.size > (max_seconds + 1) * sr:
        raise _too_long(max_seconds, f"more than {max_seconds + 1:g} s")
    return samples


def resample(samples: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE, quality: str = "HQ") -> np.ndarray:
    """Resample a mono float32 signal; a no-op when the rates already match. ``quality`` is
    soxr's: HQ for audio we read, MQ where speed matters more (training augmentation)."""
    if orig_sr == target_sr or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(samples, orig_sr, target_sr, quality=quality).astype(np.float32, copy=False)


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


def join_with_pauses(clips, gaps: list[int], rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """``clips`` in order, each after the first preceded by ``gaps[k]`` samples of low noise
    (``PAUSE_DB``, drawn from ``rng``): the joined float32 audio and each clip's first sample.
    The one joiner of the report card's long files and of preserve's joined timestamp samples,
    so that the card tests pauses of the kind the training put in."""
    parts, starts, at = [], [], 0
    for k, clip in enumerate(clips):
        clip = np.asarray(clip, dtype=np.float32).reshape(-1)
        if k:
            parts.append((rng.normal(size=gaps[k]) * 10 ** (PAUSE_DB / 20)).astype(np.float32))
            at += gaps[k]
        starts.append(at)
        parts.append(clip)
        at += clip.size
    return np.concatenate(parts), starts
