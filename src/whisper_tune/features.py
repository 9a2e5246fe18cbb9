"""From prepared clips to model inputs: label ids with the language/task prefix, log-mel
features, and the batch collator.

Prepared data keeps 16 kHz audio, not log-mel: a clip of average Common Voice length
(5 s) is 320 kB of float32 audio against 960 kB of 80 x 3000 float32 log-mel, and the
same cache then serves 80-bin (large-v2, base) and 128-bin (large-v3) models. Log-mel is
computed per batch by ``logmel.LogMel`` (the model's own ``WhisperFeatureExtractor``'s
recipe and filters, in torch) on the model's device, in one function shared by training,
evaluation and transcription; in training on a GPU the DataLoader then moves only audio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .encoder_window import window_frames
from .logmel import LogMel, frame_mask, pad_audio
from .preserve import prompted_rows
from .processor import require_language_token

IGNORE_INDEX = -100  # label positions the loss skips
# Label widths are padded to a multiple of 16 (padding the loss skips, after the text, which
# the causal decoder never attends to): a few shapes per corpus instead of one per batch.
# Each new shape has cuDNN's attention build new plans on the host, about 2 ms per attention
# call: 66 ms of a 140 ms Whisper base step on an H200 when every batch had its own width.
LABEL_MULTIPLE = 16  # also a multiple of 8 for tensor cores; 448 (max_target_positions) = 28 x 16


def set_prefix(tokenizer, language: str, task: str = "transcribe") -> None:
    """Make the tokenizer start every label with <|sot|><|lang|><|task|><|notimestamps|>."""
    require_language_token(tokenizer, language)
    tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)


def label_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with the prefix already set on ``tokenizer`` and <|endoftext|>."""
    return tokenizer(text).input_ids


def log_mel(
    feature_extractor, audios: Sequence[np.ndarray], device: str | torch.device = "cpu", window: str = "full"
) -> torch.Tensor:
    """Whisper log-mel features [batch, n_mels, 3000] of 16 kHz mono clips (padded to 30 s),
    computed on ``device`` (``logmel.LogMel``: the extractor's recipe and filters). Always
    fp32, also inside a caller's autocast. ``window`` "longest": only the frames of the
    longest clip, in whole seconds (``encoder_window``)."""
    audio, _ = pad_audio(audios)
    frames = window_frames(audio.shape[1], window)
    return LogMel.of(feature_extractor)(to_device(audio, torch.device(device)), frames=frames)


def log_mel_whole(
    feature_extractor, audio: np.ndarray, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel of a whole file for long-form decoding, with its attention mask, on ``device``:
    padded to 30 s when shorter (as ``log_mel``), kept whole when longer (samples // 160
    frames, as the feature extractor with ``padding="longest"``)."""
    samples, lengths = pad_audio([audio], max_samples=None)
    features = LogMel.of(feature_extractor)(to_device(samples, torch.device(device)), whole=True)
    return features, frame_mask(lengths, features.shape[-1]).to(features.device)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``, through pinned memory when that is a GPU (no wait for it)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def batch_to(batch: dict, log_mel_of: LogMel, device: torch.device, window: str = "full") -> dict:
    """A collated training batch on ``device``, without waiting for it: copies are
    non-blocking (the DataLoader pinned the batch), audio becomes log-mel there (cut to
    ``window``, as the collator cut its frame mask). The frame attention mask stays on the
    host, where SpecAugment draws its masks (``augment.set_spec_augment``)."""
    out = {k: v if k == "attention_mask" else v.to(device, non_blocking=True) for k, v in batch.items() if k != "audio"}
    if "audio" in batch:
        frames = window_frames(batch["audio"].shape[1], window)
        out["input_features"] = log_mel_of(batch["audio"].to(device, non_blocking=True), frames=frames)
    return out


class IndexedRows(torch.utils.data.Dataset):
    """A prepared split whose rows carry their position and epoch (``"index"``, ``"epoch"``):
    the training collator seeds each clip's augmentation with them, whatever batch or worker
    the clip lands in. Keys are row numbers or ``(epoch, row)`` pairs (what the training
    loop's batch sampler yields, so persistent workers need no per-epoch state)."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def _key(key) -> tuple[int, int]:
        return (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (0, int(key))

    def __getitem__(self, key) -> dict:
        epoch, i = self._key(key)
        return self.rows[i] | {"index": i, "epoch": epoch}

    def __getitems__(self, keys: list) -> list[dict]:
        pairs = [self._key(k) for k in keys]
        batch = self.rows[[i for _, i in pairs]]  # one columnar read, as the DataLoader does
        return [{k: v[j] for k, v in batch.items()} | {"index": i, "epoch": e} for j, (e, i) in enumerate(pairs)]


@dataclass
class SpeechCollator:
    """Pads a list of prepared examples ({"audio", "labels"}) into a training batch.

    Label padding becomes -100 so the loss ignores it (widths rounded up to
    ``LABEL_MULTIPLE``). The leading
    <|startoftranscript|> is dropped when every row has it, because the model prepends
    ``decoder_start_token_id`` itself when it shifts labels right. With ``augment`` (training
    only), each clip is perturbed first, seeded by its ``"index"`` and ``"epoch"``; with
    ``attention_mask``, the batch says which frames are speech, so SpecAugment's masks fall
    on speech rather than on the padding of a 30 s window. With ``preserve`` (a
    ``preserve.Preserver``: training only), a share of the clips is swapped for non-speech or
    replayed clips before augmentation and given timestamp or prompt targets after it; a
    batch with a prompt carries ``"decoder_input_ids"`` too, its labels masked on the prompt.

    With ``audio_only`` (training on a GPU) the batch carries ``"audio"``, zero-padded to its
    longest clip, instead of ``"input_features"``: :func:`batch_to` computes the log-mel on
    the device, so the workers only pad audio. Otherwise the workers compute the log-mel
    (on the CPU, where the training step would compute it anyway, it then overlaps the step).
    ``window`` "longest" (``model.encoder_window``) cuts the features and the frame mask to
    the batch's longest clip in whole seconds (``encoder_window.window_frames``).
    """

    feature_extractor: object
    decoder_start_token_id: int
    augment: object = None  # a whisper_tune.augment.WaveAugment, or None
    attention_mask: bool = False
    audio_only: bool = False
    preserve: object = None  # a whisper_tune.preserve.Preserver, or None (every switch off)
    window: str = "full"  # encoder window: "full" (30 s) or "longest" (the batch's longest clip)

    def __post_init__(self):
        self.log_mel = LogMel.of(self.feature_extractor)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if self.preserve is not None:
            examples = self.preserve.swap(examples)
        audios = [e["audio"] for e in examples]
        if self.augment is not None:
            audios = [self.augment(a, e["index"], e["epoch"]) for a, e in zip(audios, examples)]
        audio, lengths = pad_audio(audios)
        frames = window_frames(audio.shape[1], self.window)
        batch = {"audio": audio} if self.audio_only else {"input_features": self.log_mel(audio, frames=frames)}
        if self.attention_mask:
            batch["attention_mask"] = frame_mask(lengths, frames)
        if self.preserve is None:
            return batch | {"labels": self._labels([e["labels"] for e in examples])}
        return batch | self._preserved(self.preserve.targets(examples, audios))

    def _preserved(self, rows: list) -> dict[str, torch.Tensor]:
        """Labels of (prompt, labels) rows; with any prompt, the decoder input of every row too
        (padded with <|endoftext|>), since shifting labels masked on a prompt would lose it."""
        if not any(prompt for prompt, _ in rows):
            return {"labels": self._labels([labels for _, labels in rows])}
        inputs, targets = zip(*(prompted_rows(prompt, labels, IGNORE_INDEX) for prompt, labels in rows))
        return {
            "decoder_input_ids": _padded(inputs, self.preserve.specials.eot),
            "labels": _padded(targets, IGNORE_INDEX),
        }

    def _labels(self, rows: list) -> torch.Tensor:
        """Label ids padded with -100 to a width that is a multiple of ``LABEL_MULTIPLE``."""
        rows = [np.asarray(r, dtype=np.int64) for r in rows]
        if all(len(r) and r[0] == self.decoder_start_token_id for r in rows):
            rows = [r[1:] for r in rows]
        return _padded(rows, IGNORE_INDEX)


def _padded(rows, value: int) -> torch.Tensor:
    """Rows of ids padded with ``value`` to a width that is a multiple of ``LABEL_MULTIPLE``."""
    width = -(-max(len(r) for r in rows) // LABEL_MULTIPLE) * LABEL_MULTIPLE
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)
