"""From prepared clips to model inputs: label ids with the language/task prefix, log-mel
features, and the batch collator.

Prepared data keeps 16 kHz audio, not log-mel: a clip of average Common Voice length
(5 s) is 320 kB of float32 audio against 960 kB of 80 x 3000 float32 log-mel, and the
same cache then serves 80-bin (large-v2, base) and 128-bin (large-v3) models. Log-mel is
computed per batch by the model's own ``WhisperFeatureExtractor`` (torch STFT), in one
function shared by training, evaluation and transcription.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .audio import CHUNK_SECONDS, SAMPLE_RATE
from .processor import require_language_token

IGNORE_INDEX = -100  # label positions the loss skips


def set_prefix(tokenizer, language: str, task: str = "transcribe") -> None:
    """Make the tokenizer start every label with <|sot|><|lang|><|task|><|notimestamps|>."""
    require_language_token(tokenizer, language)
    tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)


def label_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with the prefix already set on ``tokenizer`` and <|endoftext|>."""
    return tokenizer(text).input_ids


def log_mel(feature_extractor, audios: Sequence[np.ndarray], device: str | torch.device = "cpu") -> torch.Tensor:
    """Whisper log-mel features [batch, n_mels, 3000] for 16 kHz mono clips (padded to 30 s).
    Always in fp32, also inside a caller's autocast (the extractor's STFT must not run in bf16,
    and its numpy hand-off cannot take bf16)."""
    return _extract(feature_extractor, audios, device)["input_features"]


def _extract(feature_extractor, audios: Sequence[np.ndarray], device="cpu", mask: bool = False) -> dict:
    """The feature extractor on a batch, in fp32 whatever autocast is on; with ``mask``, also
    the frame attention mask (which frames are speech, not padding)."""
    with torch.autocast(torch.device(device).type, enabled=False):
        out = feature_extractor(
            [np.asarray(a, dtype=np.float32) for a in audios],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
            device=str(device),
            return_attention_mask=mask,
        )
    return {"input_features": out.input_features} | ({"attention_mask": out.attention_mask} if mask else {})


def log_mel_whole(feature_extractor, audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel of a whole file for long-form decoding, with its attention mask: padded to
    30 s when shorter (as ``log_mel``), kept whole when longer."""
    long = len(audio) > CHUNK_SECONDS * SAMPLE_RATE
    out = feature_extractor(
        audio,
        sampling_rate=SAMPLE_RATE,
        return_tensors="pt",
        truncation=not long,
        padding="longest" if long else "max_length",
        return_attention_mask=True,
    )
    return out.input_features, out.attention_mask


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

    Label padding becomes -100 so the loss ignores it. The leading
    <|startoftranscript|> is dropped when every row has it, because the model prepends
    ``decoder_start_token_id`` itself when it shifts labels right. With ``augment`` (training
    only), each clip is perturbed first, seeded by its ``"index"`` and ``"epoch"``; with
    ``attention_mask``, the batch says which frames are speech, so SpecAugment's masks fall
    on speech rather than on the padding of a 30 s window.
    """

    feature_extractor: object
    decoder_start_token_id: int
    augment: object = None  # a whisper_tune.augment.WaveAugment, or None
    attention_mask: bool = False

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        audios = [e["audio"] for e in examples]
        if self.augment is not None:
            audios = [self.augment(a, e["index"], e["epoch"]) for a, e in zip(audios, examples)]
        batch = _extract(self.feature_extractor, audios, mask=self.attention_mask)
        longest = max(len(e["labels"]) for e in examples)
        labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
        for i, e in enumerate(examples):
            labels[i, : len(e["labels"])] = torch.as_tensor(e["labels"], dtype=torch.long)
        if (labels[:, 0] == self.decoder_start_token_id).all():
            labels = labels[:, 1:]
        return batch | {"labels": labels}
