"""Checkpoint averaging: the mean of several adapters of one run (``whisper-tune average``
and ``train.average_last``).

The weights of the last step carry that step's noise; the mean of the last few checkpoints
sits nearer the middle of where training wandered and often generalizes better to speech
and sentences it never saw (fairseq's and NeMo's ``average_checkpoints`` do this for whole
models). Here the LoRA factors A and B are averaged separately. The mean of products is not
the product of means, so this is not the mean of the weight updates B·A; for checkpoints of
one run late in training, close to each other, the difference is small, and the averaged
adapter is evaluated like any other before it can become ``best/``.

Only adapters of the same shape average: same tensor names, shapes and LoRA settings
(rank, alpha, targets); anything else is refused in one line naming the folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .adapter_check import CONFIG_FILE as CONFIG
from .adapter_check import WEIGHTS_FILE as WEIGHTS
from .adapter_check import check_adapter
from .checkpoint import write_atomically
from .errors import UserError

SAME_SETTINGS = ("peft_type", "r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern")
NOT_COPIED = {WEIGHTS, "training_state.json", "training_state.safetensors", "best.json"}


def average_weights(folders: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean (in float32, stored in each tensor's own dtype) of the adapters in
    ``folders``, which must agree in tensor names, shapes and LoRA settings."""
    from safetensors.torch import load_file

    if len(folders) < 2:
        raise UserError(f"averaging needs at least two adapters, got {len(folders)}")
    first = _settings(folders[0])
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for folder in folders:
        if _settings(folder) != first:
            raise UserError(f"{folder} has other LoRA settings ({CONFIG}) than {folders[0]}: average one run's")
        weights = load_file(str(Path(folder) / WEIGHTS))
        if total and (weights.keys() != total.keys() or any(w.shape != total[k].shape for k, w in weights.items())):
            raise UserError(f"{folder} holds other tensors than {folders[0]}: only one run's adapters average")
        for name, tensor in weights.items():
            if not torch.isfinite(tensor).all():
                raise UserError(f"{folder}: {name} holds NaN or infinite values; leave that adapter out")
            dtypes[name] = tensor.dtype
            total[name] = total[name] + tensor.float() if name in total else tensor.float()
    return {name: (t / len(folders)).to(dtypes[name]).contiguous() for name, t in total.items()}


def average_adapters(folders: list[str | Path], out: str | Path) -> Path:
    """Write the mean of ``folders`` (adapter folders or a run's ``checkpoints/step-N``) to
    ``out`` as an adapter folder that every command loads: the first folder's files with the
    averaged weights, and, for checkpoints (which hold only the adapter), the processor and
    ``whisper_tune.json`` of their run's ``adapter/`` or ``best/``."""
    from safetensors.torch import save_file

    folders = [Path(f) for f in folders]
    for folder in folders:
        if not (folder / WEIGHTS).is_file() or not (folder / CONFIG).is_file():
            raise UserError(f"{folder} is not an adapter folder ({WEIGHTS} and {CONFIG}): give adapters or checkpoints")
        check_adapter(folder)  # a damaged or crafted adapter is refused before torch reads it
    weights = average_weights(folders)
    companions = _companions(folders[0])

    def fill(tmp: Path) -> None:
        for source in (companions, folders[0]):
            if source is None:
                continue
            for item in source.iterdir():
                if item.name in NOT_COPIED or item.name.startswith("."):
                    continue
                if item.is_dir():
                    shutil.copytree(item, tmp / item.name, dirs_exist_ok=True)
                else:
                    shutil.copy2(item, tmp / item.name)
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt", "averaged": str(len(folders))})
        write_averaged_record(tmp, folders)

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder for the averaged adapter")
    write_atomically(out, fill)
    return out


def write_averaged_record(folder: Path, sources: list[Path]) -> None:
    """``averaged.json`` in an averaged adapter: the folders it is the mean of (written by
    ``whisper-tune average`` and by ``train.average_last``)."""
    (Path(folder) / "averaged.json").write_text(json.dumps({"averaged": [str(f) for f in sources]}, indent=2) + "\n")


def _settings(folder: Path) -> dict:
    try:
        config = json.loads((Path(folder) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{folder}/{CONFIG} cannot be read: {error}") from None
    if not isinstance(config, dict):
        raise UserError(f"{folder}/{CONFIG} is not a JSON object")
    return {key: _canonical(config.get(key)) for key in SAME_SETTINGS}


def _canonical(value):
    return sorted(value) if isinstance(value, list) else value


def _companions(folder: Path) -> Path | None:
    """Where a checkpoint's processor and adapter record are: the run's adapter folders."""
    if (folder / "whisper_tune.json").is_file() or folder.parent.name != "checkpoints":
        return None
    run = folder.parent.parent
    return next((f for f in (run / "best", run / "adapter") if (f / "whisper_tune.json").is_file()), None)


def last_checkpoints(checkpoints: Path, n: int) -> list[Path]:
    """The newest ``n`` finished checkpoints of a run folder's ``checkpoints/``, oldest first."""
    from .checkpoint import finished

    return finished(checkpoints)[-n:]
