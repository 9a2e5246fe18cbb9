"""Training-time augmentation: waveform perturbations per clip, and SpecAugment through
Whisper's own config.

A fine-tune on a few voices learns those voices more than the language; perturbing the
training audio (speed, gain, noise, pitch) and masking its log-mel (SpecAugment) makes the
same clips look like more speakers and rooms. Two rules hold:

- **Deterministic.** Each clip's perturbation is drawn from a generator seeded by
  ``(seed, epoch, clip index)``, never from a worker's global state, so ``--resume``
  (and any number of DataLoader workers, or another batch size) sees exactly the audio an
  uninterrupted run saw. SpecAugment draws from numpy's global generator inside the
  model's forward, in the main process, whose state every checkpoint stores.
- **Training only.** Only the training collator holds a :class:`WaveAugment`; evaluation
  and transcription build features from the raw audio, and Whisper applies SpecAugment only
  in ``train()`` mode. The switch lives only on the training model's config: an adapter
  saves no base config, and a merge starts from the base's own.
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import CHUNK_SECONDS, SAMPLE_RATE, resample
from .errors import UserError
from .patches import WRITTEN_FOR, Patch, register, usable

log = logging.getLogger(__name__)

NOISE_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")
MAX_NOISE_CLIPS = 200  # a noise folder is read once per worker; more clips add little variety


def spec_augment_config(settings) -> dict:
    """The Whisper config fields that switch SpecAugment on (or off) for ``settings``
    (an :class:`whisper_tune.config.AugmentSettings`)."""
    on = settings.enabled and settings.spec_augment
    return {
        "apply_spec_augment": on,
        "mask_time_prob": settings.mask_time_prob if on else 0.0,
        "mask_time_length": settings.mask_time_length,
        "mask_time_min_masks": settings.mask_time_min_masks,
        "mask_feature_prob": settings.mask_feature_prob if on else 0.0,
        "mask_feature_length": settings.mask_feature_length,
        "mask_feature_min_masks": 0,
    }


def _fits_spec_augment(model=None) -> bool:
    """``WhisperModel._mask_input_features`` is there to shadow, and ``_compute_mask_indices``
    (the draws :func:`spec_augment` shares with it) takes the arguments passed here."""
    import inspect

    try:
        from transformers.models.whisper.modeling_whisper import WhisperModel, _compute_mask_indices
    except ImportError:
        return False
    wanted = {"shape", "mask_prob", "mask_length", "attention_mask", "min_masks"}
    return callable(getattr(WhisperModel, "_mask_input_features", None)) and wanted <= set(
        inspect.signature(_compute_mask_indices).parameters
    )


SPEC_AUGMENT_MASKS = register(
    Patch(
        "spec_augment_masks",
        WRITTEN_FOR,
        _fits_spec_augment,
        fallback="SpecAugment through transformers' own masking (slower; exact resume not re-checked)",
    )
)


def set_spec_augment(model, settings) -> None:
    """Write :func:`spec_augment_config` into the (possibly PEFT-wrapped) model's config,
    and have its ``WhisperModel`` mask through :func:`spec_augment` (the same masks, no
    wait for the GPU)."""
    from transformers.models.whisper.modeling_whisper import WhisperModel

    config = getattr(model, "config", None) or model.get_base_model().config
    for key, value in spec_augment_config(settings).items():
        setattr(config, key, value)
    if not usable(SPEC_AUGMENT_MASKS):
        return  # transformers' own masks: the same draws, with its waits for the GPU
    for module in model.modules():
        if isinstance(module, WhisperModel):
            module._mask_input_features = types.MethodType(spec_augment, module)


def _mask_on(mask: np.ndarray, device: torch.device) -> torch.Tensor:
    from .features import to_device

    return to_device(torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)), device)


def spec_augment(whisper, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``WhisperModel._mask_input_features`` without a host sync. Transformers' own draws the
    masks on the host and then reads the attention mask back from the GPU, copies the masks
    from pageable memory and zeroes them by boolean indexing: three waits for the GPU in
    each step. Here the masks are the same draws (transformers' ``_compute_mask_indices``
    on numpy's global generator, which checkpoints store, so ``--resume`` stays exact), from
    the host-side attention mask, sent through pinned memory and applied with ``masked_fill``."""
    from transformers.models.whisper.modeling_whisper import _compute_mask_indices

    config = whisper.config
    if not getattr(config, "apply_spec_augment", True) or not whisper.training:
        return input_features
    batch, bins, frames = input_features.shape
    if config.mask_time_prob > 0:
        mask = _compute_mask_indices(
            (batch, frames),
            mask_prob=config.mask_time_prob,
            mask_length=config.mask_time_length,
            attention_mask=None if attention_mask is None else attention_mask.cpu(),
            min_masks=config.mask_time_min_masks,
        )
        input_features = input_features.masked_fill(_mask_on(mask, input_features.device)[:, None, :], 0)
    if config.mask_feature_prob > 0:
        mask = _compute_mask_indices(
            (batch, bins),
            mask_prob=config.mask_feature_prob,
            mask_length=config.mask_feature_length,
            min_masks=config.mask_feature_min_masks,
        )
        input_features = input_features.masked_fill(_mask_on(mask, input_features.device)[:, :, None], 0)
    return input_features


@dataclass
class WaveAugment:
    """Per-clip waveform perturbations, each applied with its own probability.

    Built once from :class:`~whisper_tune.config.AugmentSettings` by :meth:`from_settings`
    (None when nothing would change a clip). Picklable, so DataLoader workers carry it."""

    seed: int
    speed_prob: float
    speed_range: tuple[float, float]
    gain_prob: float
    gain_db: tuple[float, float]
    noise_prob: float
    snr_db: tuple[float, float]
    pitch_prob: float
    pitch_semitones: tuple[float, float]
    noise_dir: str | None = None
    max_samples: int = CHUNK_SECONDS * SAMPLE_RATE

    @classmethod
    def from_settings(cls, settings, seed: int) -> WaveAugment | None:
        if settings.enabled and settings.noise_dir:
            noise_files(settings.noise_dir)  # a wrong folder fails now, named, not later in a worker
        probs = (settings.speed_prob, settings.gain_prob, settings.noise_prob, settings.pitch_prob)
        if not settings.enabled or not any(probs):
            return None
        return cls(
            seed=seed,
            speed_prob=settings.speed_prob,
            speed_range=tuple(settings.speed_range),
            gain_prob=settings.gain_prob,
            gain_db=tuple(settings.gain_db),
            noise_prob=settings.noise_prob,
            snr_db=tuple(settings.snr_db),
            pitch_prob=settings.pitch_prob,
            pitch_semitones=tuple(settings.pitch_semitones),
            noise_dir=settings.noise_dir,
        )

    def __call__(self, audio: np.ndarray, index: int, epoch: int) -> np.ndarray:
        """The perturbed clip: a pure function of (settings, seed, epoch, index, audio)."""
        rng = np.random.default_rng([self.seed, epoch, int(index)])
        draws = rng.random(4)  # one draw per perturbation, always taken: later ones stay put
        out = np.asarray(audio, dtype=np.float32)
        if draws[0] < self.speed_prob:
            out = change_speed(out, self._speed(rng, len(out)))[: self.max_samples]  # rate rounding: <1 ms
        if draws[1] < self.pitch_prob:
            out = shift_pitch(out, rng.uniform(*self.pitch_semitones))
        if draws[2] < self.gain_prob:
            out = out * np.float32(10 ** (rng.uniform(*self.gain_db) / 20))
        if draws[3] < self.noise_prob:
            out = add_noise(out, self._noise(rng, len(out)), rng.uniform(*self.snr_db))
        return np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)

    def _speed(self, rng: np.random.Generator, n: int) -> float:
        """A speed factor; never so slow that the clip outgrows Whisper's 30 s window (its
        transcript would then describe audio the model never sees)."""
        low, high = self.speed_range
        low = max(low, n / self.max_samples)
        return float(rng.uniform(low, max(low, high)))

    def _noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Noise for a clip of ``n`` samples: a random stretch of a user's noise clip when a
        folder is given (half of the time), else generated coloured noise."""
        clips = self._noise_clips() if self.noise_dir else []
        if clips and rng.random() < 0.5:
            clip = clips[rng.integers(len(clips))]
            reps = -(-n // len(clip)) + 1
            start = rng.integers(len(clip))
            return np.tile(clip, reps)[start : start + n]
        return coloured_noise(n, rng.uniform(0.0, 2.0), rng)

    def _noise_clips(self) -> list[np.ndarray]:
        if not hasattr(self, "_clips"):
            from .audio import load_audio

            self._clips = [c for c in (load_audio(p) for p in noise_files(self.noise_dir)) if c.size]
        return self._clips


def noise_files(folder: str | Path) -> list[Path]:
    """The audio files of a noise folder (sorted, so every worker draws from the same list)."""
    path = Path(folder)
    if not path.is_dir():
        raise UserError(f"augment.noise_dir: {folder} is not a folder; give a folder of noise recordings or null")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in NOISE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(
            f"augment.noise_dir: no audio files ({', '.join(NOISE_SUFFIXES)}) in {folder}; "
            "add noise clips or set it to null"
        )
    return files[:MAX_NOISE_CLIPS]


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (tempo and pitch together, as Kaldi's speed perturbation
    does): resample to ``SAMPLE_RATE / factor`` and read it back at ``SAMPLE_RATE``."""
    if abs(factor - 1.0) < 1e-6 or audio.size == 0:
        return audio
    return resample(audio, SAMPLE_RATE, round(SAMPLE_RATE / factor), quality="MQ")


def shift_pitch(audio: np.ndarray, semitones: float) -> np.ndarray:
    """Raise the pitch by ``semitones`` at the same duration: a phase-vocoder time stretch
    by the pitch ratio, then resampling back to the original length."""
    ratio = 2 ** (semitones / 12)
    if abs(ratio - 1.0) < 1e-6 or audio.size < 2048:
        return audio
    stretched = _time_stretch(audio, 1 / ratio)
    back = resample(stretched, len(stretched), len(audio), quality="MQ")
    return np.pad(back, (0, max(0, len(audio) - len(back))))[: len(audio)]


def _time_stretch(audio: np.ndarray, rate: float, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Phase-vocoder time stretch (``rate`` > 1: shorter), in numpy."""
    window = np.hanning(n_fft).astype(np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(audio, n_fft // 2), n_fft)[::hop] * window
    spec = np.fft.rfft(frames, axis=-1)
    steps = np.arange(0, len(spec) - 1, rate)
    expected = 2 * np.pi * hop * np.arange(spec.shape[1]) / n_fft
    phase = np.angle(spec[0])
    out = np.zeros((len(steps), spec.shape[1]), dtype=np.complex64)
    for i, t in enumerate(steps):
        lo, frac = int(t), t - int(t)
        mag = (1 - frac) * np.abs(spec[lo]) + frac * np.abs(spec[lo + 1])
        out[i] = mag * np.exp(1j * phase)
        delta = np.angle(spec[lo + 1]) - np.angle(spec[lo]) - expected
        phase = phase + expected + (delta - 2 * np.pi * np.round(delta / (2 * np.pi)))
    frames_out = np.fft.irfft(out, n=n_fft, axis=-1) * window
    length = hop * (len(steps) - 1) + n_fft
    signal, norm = np.zeros(length, np.float32), np.zeros(length, np.float32)
    for i, frame in enumerate(frames_out):
        signal[i * hop : i * hop + n_fft] += frame
        norm[i * hop : i * hop + n_fft] += window**2
    return (signal / np.maximum(norm, 1e-3))[n_fft // 2 : length - n_fft // 2].astype(np.float32)


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise whose power falls as 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spectrum = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    freqs = np.maximum(np.fft.rfftfreq(n), 1.0 / max(n, 1))
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n=n)
    rms = np.sqrt(np.mean(noise**2)) or 1.0
    return (noise / rms).astype(np.float32)


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``audio`` plus ``noise`` scaled to ``snr_db`` below the clip's own power."""
    power = float(np.mean(np.square(audio, dtype=np.float64)))
    noise_power = float(np.mean(np.square(noise, dtype=np.float64)))
    if power == 0 or noise_power == 0:
        return audio
    scale = np.sqrt(power / (noise_power * 10 ** (snr_db / 10)))
    return (audio + scale * noise[: len(audio)]).astype(np.float32)
