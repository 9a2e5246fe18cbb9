"""Error rates of a model on prepared clips: batched greedy generation with the language
and task forced, decoded without special tokens, scored with jiwer.

Clips are generated longest first so each batch pads little and the first batch shows
the worst-case memory at once.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from .features import log_mel
from .metrics import error_rates


@dataclass
class GenerationResult:
    ids: list[str]
    references: list[str]
    hypotheses: list[str]
    seconds: float

    @property
    def clips_per_s(self) -> float:
        return len(self.hypotheses) / self.seconds if self.seconds else 0.0

    def scores(self) -> dict[str, float]:
        return error_rates(self.references, self.hypotheses)


def input_dtype(model) -> torch.dtype:
    """The dtype the encoder's first convolution expects (fp32 under autocast too)."""
    return model.get_encoder().conv1.weight.dtype


def generate_on(model, processor, dataset, language: str, task: str = "transcribe", batch_size: int = 16,
                max_new_tokens: int = 128, amp: torch.dtype | None = None, max_samples: int | None = None,
                progress: bool = False) -> GenerationResult:
    """Transcribe every clip of a prepared dataset (in its own order in the result)."""
    from tqdm.auto import tqdm

    device = next(p for p in model.parameters()).device
    n = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    durations = np.asarray(dataset.select_columns(["duration"])[:n]["duration"], dtype=np.float32)
    order = np.argsort(-durations, kind="stable")
    hyps: list[str | None] = [None] * n
    data = dataset.select_columns(["audio"]).with_format("numpy")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    autocast = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for i in tqdm(range(0, n, batch_size), desc="generate", unit="batch", disable=not progress):
            idx = order[i:i + batch_size].tolist()
            audios = [data[j]["audio"] for j in idx]
            features = log_mel(processor.feature_extractor, audios, device=device)
            out = model.generate(input_features=features.to(device=device, dtype=input_dtype(model)),
                                 language=language, task=task, max_new_tokens=max_new_tokens)
            for j, text in zip(idx, processor.tokenizer.batch_decode(out, skip_special_tokens=True)):
                hyps[j] = text.strip()
    seconds = time.perf_counter() - start
    model.train(was_training)
    meta = dataset.select_columns(["id", "text"])[:n]
    return GenerationResult(meta["id"], meta["text"], hyps, seconds)
