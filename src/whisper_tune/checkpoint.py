"""Checkpoints that hold only what is trained, written atomically.

A checkpoint folder ``checkpoints/step-000200/`` holds the adapter
(``adapter_model.safetensors`` + ``adapter_config.json``, the PEFT layout) and
``training_state.pt`` (optimizer, scheduler, grad scaler, RNG states, data position).
It is written under a hidden temporary name and renamed into place, so a process killed
mid-write leaves no folder that loads half; ``latest`` only ever sees finished ones.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "training_state.pt"
STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_atomically(final: Path, fill) -> Path:
    """Call ``fill(tmp_dir)`` then rename ``tmp_dir`` to ``final`` (replacing it)."""
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    if final.exists():
        old = final.with_name(f".{final.name}.old{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    return final


def save(folder: Path, step: int, model, state: dict) -> Path:
    """Write checkpoint ``step`` (adapter + training state) under ``folder``."""

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        torch.save(state | {"rng": rng_state(), "step": step}, tmp / STATE_FILE)

    return write_atomically(folder / f"step-{step:06d}", fill)


def finished(folder: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def latest(folder: Path) -> Path | None:
    done = finished(folder)
    return done[-1] if done else None


def load(path: Path, model) -> dict:
    """Load a checkpoint's adapter into ``model`` and return its training state."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)


def prune(folder: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` (at least one) checkpoints; the best adapter lives elsewhere."""
    for old in finished(folder)[: -max(1, keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
