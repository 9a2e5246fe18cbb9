"""The busiest adapter's merged copy, for an engine that holds several adapters unmerged on
one base (``open_engine(adapters=...)``, ``whisper-tune api --adapter A=... --adapter B=...``).

Unmerged, every linear layer an adapter covers runs its LoRA branch beside the base weight
(two more small matrix products and an addition per layer and token). Merged (``W + s·BA``),
the layer is one matrix product, as in the base. Requests are seldom spread evenly over the
adapters, so the one most of the recent requests ask for is kept merged in a copy of the
model, made when it becomes the busiest and memory allows (about a base's weights more);
the others keep switching on the shared, unmerged model (PEFT's ``set_adapter``).

A copy, not PEFT's merge in place (``merge_adapter`` / ``unmerge_adapter`` on the shared
model): unmerging subtracts ``s·BA`` again, which does not give the base weights back
bit for bit (in bf16, about one rounding step per switch, accumulating over switches), and
while one adapter is merged in place PEFT silently leaves the others out of the forward
pass. The copy comes from ``merge_and_unload(adapter_names=[busiest])`` on a deep copy, so
the shared model is never written to.

The copy decodes through the same path as the shared model (the engine's rule reads the
shared model, see ``TransformersEngine.batched``), so an answer does not depend on whether
its adapter happened to be the busiest: tests check the text is the same merged and
unmerged; the gain is the LoRA branches (``benchmarks/merged_adapter.py``).
"""

from __future__ import annotations

import collections
import copy
import gc
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

RECENT = 64  # requests counted: the busiest adapter is the one most of the last 64 asked for...
LEAST = 3  # ...with at least 3 of them (a copy is not made for an adapter asked once or twice)
HEADROOM = 2.0  # a copy is made where free memory holds it twice: the copy, and room left to decode
MEMINFO = Path("/proc/meminfo")


class MergedCopy:
    """Counts the adapters requests ask for and holds the busiest one merged into a copy of
    the shared model; :meth:`model_for` says which model decodes a request."""

    def __init__(self, shared, peft_names: dict[str, str], recent: int = RECENT, least: int = LEAST):
        self.shared, self.peft_names, self.least = shared, peft_names, least
        self.recent: collections.deque[str] = collections.deque(maxlen=recent)
        self.name: str | None = None  # the adapter merged into the copy
        self.model = None  # the copy: a plain transformers Whisper
        self.declined: str | None = None  # why the last copy was not made, in words

    def model_for(self, name: str):
        """Count a request for adapter ``name`` and return the model to decode it with: the
        merged copy where ``name`` is the busiest (copied now if it just became so), else the
        shared model with ``name`` switched on."""
        self.recent.append(name)
        busiest = self._busiest()
        if busiest is not None and busiest != self.name:
            self._copy(busiest)
        if name == self.name:
            return self.model
        self.shared.set_adapter(self.peft_names[name])
        return self.shared

    def _busiest(self) -> str | None:
        """The adapter most of the recent requests asked for, if it has at least ``least`` of
        them and more than the one merged now (a tie keeps the copy: no copy per request when
        two adapters take turns)."""
        counts = collections.Counter(self.recent)
        name, n = counts.most_common(1)[0]
        if n < self.least or (self.name is not None and counts[self.name] >= n):
            return None
        return name

    def _copy(self, name: str) -> None:
        self.model, self.name = None, None  # the old copy goes first: its memory is the new one's
        gc.collect()
        device = next(self.shared.parameters()).device
        if device.type == "cuda":
            torch.cuda.empty_cache()
        need = base_bytes(self.shared)
        free = free_bytes(device)
        if free < HEADROOM * need:
            self.declined = (
                f"{name} stays unmerged: a merged copy needs {need / 2**20:.0f} MiB and "
                f"{free / 2**20:.0f} MiB are free on {device} (at least {HEADROOM:g}x wanted)"
            )
            log.info("%s", self.declined)
            return
        duplicate = copy.deepcopy(self.shared)
        merged = duplicate.merge_and_unload(adapter_names=[self.peft_names[name]])
        merged.eval()
        merged.__dict__.pop("_whisper_tune_decoders", None)  # decoders built for the shared model
        self.model, self.name, self.declined = merged, name, None
        log.info("adapter %s is the busiest: decoding it merged (a copy of %.0f MiB)", name, need / 2**20)


def base_bytes(model) -> int:
    """Bytes of the model's weights without its adapters (what a merged copy holds)."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" not in n)


def free_bytes(device: torch.device) -> int:
    """Memory free for a copy: the GPU's free memory (with what PyTorch holds cached), or the
    machine's available memory (``MemAvailable``: free plus what the kernel can drop)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
