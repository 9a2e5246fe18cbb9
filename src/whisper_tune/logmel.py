"""Whisper's log-mel spectrogram in torch, on whatever device holds the audio.

``WhisperFeatureExtractor`` computes the same thing, but from a list of numpy clips and
back to numpy: on a GPU machine its place is the DataLoader workers, on the CPU, and for
Whisper base that work (and moving 30 s x 80 bins of fp32 per clip to the GPU) took longer
than the training step itself. :class:`LogMel` takes a batch of zero-padded 16 kHz audio
as one tensor, so the DataLoader moves only audio (a 5 s clip is 320 kB, its log-mel
960 kB) and the STFT runs next to the model. It is the extractor's own recipe, step for
step (``_torch_extract_fbank_features``): the clip padded with zeros to 30 s (truncated
when longer), a centred 400-point Hann STFT every 160 samples with the last frame dropped,
power spectrum, the extractor's own mel filters, log10 clamped at 1e-10, values floored 8
below the clip's maximum (taken over the padded 30 s, as the extractor does), then
``(x + 4) / 4``. Always computed in fp32, also inside a caller's autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .audio import N_SAMPLES, SAMPLE_RATE

N_FFT = 400  # samples per STFT window: 25 ms at 16 kHz
HOP_LENGTH = 160  # samples between frames: 10 ms
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 frames in a 30 s window
DYNAMIC_RANGE = 8.0  # log10 units kept below each clip's loudest bin (80 dB)


class LogMel:
    """Whisper's log-mel features of a batch of 16 kHz audio, on the audio's device.

    Built from the model's ``WhisperFeatureExtractor`` (:meth:`of`), whose mel filters
    (80 or 128 bins) it uses; the filters and window are copied to a device once."""

    def __init__(self, mel_filters: np.ndarray, dither: float = 0.0):
        self.filters = torch.as_tensor(np.asarray(mel_filters), dtype=torch.float32).T.contiguous()  # [mels, 201]
        self.dither = float(dither)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def of(cls, feature_extractor) -> LogMel:
        """The log-mel that ``feature_extractor`` computes (its filters and dither)."""
        fe = feature_extractor
        if (fe.n_fft, fe.hop_length, fe.sampling_rate) != (N_FFT, HOP_LENGTH, SAMPLE_RATE):
            raise ValueError(
                f"feature extractor with n_fft {fe.n_fft}, hop {fe.hop_length}, {fe.sampling_rate} Hz: "
                f"Whisper's are {N_FFT}, {HOP_LENGTH}, {SAMPLE_RATE} Hz"
            )
        return cls(fe.mel_filters, getattr(fe, "dither", 0.0))

    @property
    def n_mels(self) -> int:
        return self.filters.shape[0]

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on:
            self._on[device] = (self.filters.to(device), torch.hann_window(N_FFT, device=device))
        return self._on[device]

    def __call__(self, audio: torch.Tensor, whole: bool = False, frames: int = N_FRAMES) -> torch.Tensor:
        """Features [batch, n_mels, 3000] of ``audio`` [batch, samples] (fp32, zero-padded:
        padding with zeros up to 30 s changes nothing). With ``whole``, a clip longer than
        30 s keeps all its frames (samples // 160) instead of being cut to 30 s. With
        ``frames`` below 3000 (``encoder_window``): the first ``frames`` frames of those
        features, computed from the audio up to the last of them (plus one FFT window of
        zeros, so no frame sees the STFT's reflection at the end); the floor is the same,
        since frames beyond a clip's audio hold the log-mel minimum."""
        if audio.dim() != 2:
            raise ValueError(f"audio must be [batch, samples], got shape {tuple(audio.shape)}")
        if not 0 < frames <= N_FRAMES or (whole and frames != N_FRAMES):
            raise ValueError(f"frames must be in 1..{N_FRAMES} (and {N_FRAMES} with whole), got {frames}")
        filters, window = self._constants(audio.device)
        samples = N_SAMPLES if frames == N_FRAMES else frames * HOP_LENGTH + N_FFT
        with torch.autocast(audio.device.type, enabled=False):
            audio = audio.float()
            if not (whole and audio.shape[1] > N_SAMPLES):
                audio = torch.nn.functional.pad(audio[:, :samples], (0, samples - min(audio.shape[1], samples)))
            if self.dither:
                audio = audio + self.dither * torch.randn_like(audio)
            stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
            stft = stft[..., :frames] if frames < N_FRAMES else stft[..., :-1]
            power = (stft.abs() ** 2).contiguous()  # contiguous: the strided matmul is 8x slower on CPUs
            mel = torch.clamp(filters @ power, min=1e-10).log10()
            floor = mel.amax(dim=(1, 2), keepdim=True) - DYNAMIC_RANGE
            return (torch.maximum(mel, floor) + 4.0) / 4.0


def pad_audio(audios: Sequence[np.ndarray], max_samples: int | None = N_SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """(audio [batch, longest] fp32 zero-padded, lengths [batch]) of clips cut to
    ``max_samples`` (30 s; None: whole): what the DataLoader moves instead of log-mel."""
    clips = [np.asarray(a, dtype=np.float32)[:max_samples] for a in audios]
    lengths = torch.tensor([len(c) for c in clips], dtype=torch.long)
    out = np.zeros((len(clips), int(lengths.max()) if clips else 0), dtype=np.float32)
    for i, c in enumerate(clips):
        out[i, : len(c)] = c
    return torch.from_numpy(out), lengths


def frame_mask(lengths: torch.Tensor, n_frames: int = N_FRAMES) -> torch.Tensor:
    """Which of ``n_frames`` frames start inside each clip ([batch, n_frames] int32, 1 =
    speech): the feature extractor's attention mask (its sample mask taken every 160th
    sample)."""
    starts = torch.arange(n_frames, dtype=torch.long) * HOP_LENGTH
    return (starts[None, :] < lengths.cpu()[:, None]).to(torch.int32)
