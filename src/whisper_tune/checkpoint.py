"""Checkpoints that hold only what is trained, written atomically and read without pickle.

A checkpoint folder ``checkpoints/step-000200/`` holds

- ``adapter_model.safetensors`` + ``adapter_config.json``: the adapter, in the PEFT layout;
- ``training_state.safetensors``: every tensor of the training state (optimizer moments and
  step counts, torch and CUDA RNG states, numpy's RNG key), named by where it sits in the state
  (``optimizer.state.0.exp_avg``, ``rng.torch``);
- ``training_state.json``, written last: everything else (step, epoch, data position, best
  score, scheduler, Python's RNG, the caller's ``run`` record), with references where the
  tensors were, and the SHA-256 of both ``.safetensors`` files. :func:`encode` and
  :func:`decode` map nested state to and from this pair exactly (int dict keys, tuples, inf/nan,
  numpy arrays and tensors of any dtype come back as they went in).

Why no pickle: unpickling runs whatever code the file names, so a crafted file dropped into a
run folder would run on ``train --resume``; JSON and safetensors only ever yield data. Folders
written by older versions (``training_state.pt``, a pickle) are refused and never opened.

Why hashes: a power cut can leave files truncated or zeroed after the rename, and changed bytes
in the data section of a safetensors file still parse. Every file is checked before any of it
reaches the model, and :func:`resume_state` falls back to the newest checkpoint that reads whole.

Each folder is written under a hidden temporary name (``.step-000200.tmpPID``) and renamed into
place, so a process killed mid-write leaves no folder that loads half; ``latest`` only ever sees
finished ones, and :func:`clean_stale` (called by :func:`save`) removes what such a kill leaves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from .errors import UserError

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter_model.safetensors"
STATE_FILE = "training_state.json"  # written last: its presence marks a finished checkpoint
TENSORS_FILE = "training_state.safetensors"
LEGACY_STATE_FILE = "training_state.pt"  # a pickle from older versions: refused, never read
FORMAT = "whisper-tune training state 1"
STEP_DIR = re.compile(r"^step-(\d+)$")
TEMP_DIR = re.compile(r"^\.(.+)\.(tmp|old)(\d+)$")  # write_atomically's working names

# Reading a damaged folder fails with one of these; anything else is a bug and keeps its traceback.
_DAMAGE = (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError, SafetensorError)


class CheckpointUnreadable(UserError):
    """A checkpoint whose files are missing, truncated or altered: resume falls back past it."""


# --- nested state <-> JSON tree + named tensors ---------------------------------------------

_TUPLE, _PAIRS, _FLOAT, _TENSOR, _NDARRAY = "__tuple__", "__dict__", "__float__", "__tensor__", "__ndarray__"
_TAGS = (_TUPLE, _PAIRS, _FLOAT, _TENSOR, _NDARRAY)


def encode(obj) -> tuple[object, dict[str, torch.Tensor]]:
    """Split nested state into a strict-JSON tree and the CPU tensors it refers to by name.

    JSON keeps str-keyed dicts, lists, str, int, finite float, bool and None as they are; the rest
    becomes a one-key object tagged ``__tuple__``, ``__dict__`` (non-str keys, as in optimizer
    state), ``__float__`` (inf, nan), ``__tensor__`` or ``__ndarray__``. Anything else raises
    TypeError naming where it sits, rather than coming back as something different.
    """
    tensors: dict[str, torch.Tensor] = {}
    return _encode(obj, "", tensors), tensors


def _encode(obj, path: str, tensors: dict):
    if obj is None or type(obj) in (bool, int, str):
        return obj
    if type(obj) is float:
        return obj if math.isfinite(obj) else {_FLOAT: repr(obj)}
    if isinstance(obj, dict):
        return _encode_dict(obj, path, tensors)
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, _join(path, i), tensors) for i, v in enumerate(obj)]
        return {_TUPLE: items} if isinstance(obj, tuple) else items
    if isinstance(obj, torch.Tensor):
        return {_TENSOR: _store(tensors, path, obj.detach().to("cpu", copy=True).contiguous())}
    if isinstance(obj, (np.ndarray, np.generic)):
        return {_NDARRAY: _encode_array(obj, path, tensors)}
    raise TypeError(f"cannot store {type(obj).__name__} at {path or 'the top'} of a training state")


def _encode_dict(obj: dict, path: str, tensors: dict):
    """Str keys stay a JSON object (readable); other keys, or a key that looks like a tag, go as pairs."""
    if all(type(k) is str for k in obj) and not (len(obj) == 1 and next(iter(obj)) in _TAGS):
        return {k: _encode(v, _join(path, k), tensors) for k, v in obj.items()}
    return {_PAIRS: [[_encode(k, path, tensors), _encode(v, _join(path, k), tensors)] for k, v in obj.items()]}


def _encode_array(obj, path: str, tensors: dict) -> dict:
    """Numpy data as raw bytes plus dtype and shape: exact for every numeric dtype and byte order,
    and independent of which dtypes this safetensors version knows."""
    arr = np.asarray(obj)
    if arr.dtype.hasobject or arr.dtype.fields:
        raise TypeError(f"cannot store a numpy array of dtype {arr.dtype} at {path}")
    raw = torch.from_numpy(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).copy())
    scalar = isinstance(obj, np.generic)
    return {"name": _store(tensors, path, raw), "dtype": arr.dtype.str, "shape": list(arr.shape), "scalar": scalar}


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _store(tensors: dict, path: str, tensor: torch.Tensor) -> str:
    """Keep ``tensor`` under its path in the state (made unique should two paths print the same)."""
    name, n = path or "tensor", 1
    while name in tensors:
        name, n = f"{path}#{n}", n + 1
    tensors[name] = tensor
    return name


def decode(tree, tensors: dict[str, torch.Tensor]):
    """Rebuild the state that :func:`encode` split into ``tree`` and ``tensors``.

    Only builds data: a tree from a damaged file fails with KeyError/TypeError/ValueError.
    """
    if isinstance(tree, list):
        return [decode(v, tensors) for v in tree]
    if isinstance(tree, dict):
        if len(tree) == 1 and (tag := next(iter(tree))) in _DECODERS:
            return _DECODERS[tag](tree[tag], tensors)
        return {k: decode(v, tensors) for k, v in tree.items()}
    return tree


def _decode_array(spec: dict, tensors: dict):
    raw = tensors[spec["name"]].numpy()
    arr = raw.view(np.dtype(spec["dtype"])).reshape(spec["shape"]).copy()  # owns its memory, like the one saved
    return arr[()] if spec["scalar"] else arr


_DECODERS = {
    _TUPLE: lambda items, tensors: tuple(decode(v, tensors) for v in items),
    _PAIRS: lambda pairs, tensors: {decode(k, tensors): decode(v, tensors) for k, v in pairs},
    _FLOAT: lambda text, tensors: float(text),
    _TENSOR: lambda name, tensors: tensors[name],
    _NDARRAY: _decode_array,
}


# --- random number generators -----------------------------------------------------------------


def rng_state() -> dict:
    """The state of every generator training draws from (Python, numpy, torch, CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put back what :func:`rng_state` returned (also after :func:`encode`/:func:`decode`)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- writing ----------------------------------------------------------------------------------


def write_json_atomically(path: Path, data) -> None:
    """The file twin of :func:`write_atomically`: write beside, then rename, so a reader (or a
    kill) never sees half a record."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


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


def clean_stale(folder: Path) -> list[Path]:
    """Remove the temporary folders that a killed :func:`write_atomically` left in ``folder``.

    A ``.NAME.tmpPID`` / ``.NAME.oldPID`` folder is stale when PID is no live process, or is
    ours (then it is left from an earlier call that failed: one process writes one at a time).
    A stale ``.NAME.oldPID`` whose ``NAME`` is missing is the last finished copy of NAME (the
    kill fell between the two renames), so it is renamed back instead of removed.
    Returns the folders removed.
    """
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        match = TEMP_DIR.match(path.name)
        if not match or not path.is_dir() or path.is_symlink() or _writer_alive(int(match.group(3))):
            continue
        final = folder / match.group(1)
        if match.group(2) == "old" and not final.exists():
            path.rename(final)
            log.warning("restored %s from %s, left by a write that was killed", final, path.name)
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    return removed


def _writer_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be writing its temporary folder (when unsure: yes)."""
    if pid == os.getpid():
        return False
    if os.name != "posix":
        return True  # os.kill(pid, 0) is no harmless probe on Windows
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def save(folder: Path, step: int, model, state: dict) -> Path:
    """Write checkpoint ``step`` (adapter + training state + RNG states) under ``folder``.

    ``state`` may hold any nested data :func:`encode` takes, e.g. optimizer/scheduler/scaler
    state dicts and a JSON-able ``run`` record that :func:`resume_differences` compares later.
    """
    from safetensors.torch import save as tensors_to_bytes

    clean_stale(folder)

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tree, tensors = encode(state | {"rng": rng_state(), "step": step})
        (tmp / TENSORS_FILE).write_bytes(tensors_to_bytes(tensors))
        record = {"format": FORMAT, "sha256": {name: _sha256(tmp / name) for name in (ADAPTER_FILE, TENSORS_FILE)}}
        record["state_sha256"] = _tree_sha256(tree)
        text = json.dumps(record | {"state": tree}, indent=1, allow_nan=False, ensure_ascii=False)
        (tmp / STATE_FILE).write_text(text, encoding="utf-8")

    return write_atomically(folder / f"step-{step:06d}", fill)


def _tree_sha256(tree) -> str:
    """The SHA-256 of the state tree in one canonical JSON form: ``training_state.json``'s own
    values are covered like the tensor files (an edited step or position is refused)."""
    text = json.dumps(tree, sort_keys=True, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --- finding --------------------------------------------------------------------------------


def _step_folders(folder: Path) -> list[Path]:
    """Every ``step-N`` folder, finished or not, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _is_finished(path: Path) -> bool:
    """All files of the current layout are there, or this is an older version's checkpoint: listed
    so that ``--resume`` refuses it loudly instead of starting over next to it."""
    current = all((path / name).is_file() for name in (ADAPTER_FILE, TENSORS_FILE, STATE_FILE))
    return current or (path / LEGACY_STATE_FILE).is_file()


def finished(folder: Path) -> list[Path]:
    """Finished checkpoints, oldest first (older versions' included: :func:`load` refuses those)."""
    return [p for p in _step_folders(folder) if _is_finished(p)]


def latest(folder: Path) -> Path | None:
    """The newest finished checkpoint, whether or not its files are intact (see :func:`resume_state`)."""
    done = finished(folder)
    return done[-1] if done else None


def prune(folder: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` (at least one) checkpoints; the best adapter lives elsewhere."""
    for old in finished(folder)[: -max(1, keep_last)]:
        shutil.rmtree(old, ignore_errors=True)


# --- reading --------------------------------------------------------------------------------


def _refuse_legacy(path: Path) -> None:
    """Older versions pickled the state; opening that would run any code a crafted file names."""
    if (path / LEGACY_STATE_FILE).exists():
        raise UserError(
            f"{path} was written by an older whisper-tune ({LEGACY_STATE_FILE}, a pickle this version never opens): "
            "start a new run in another train.output_dir, or resume with the whisper-tune version that wrote it"
        )


def _checked_bytes(path: Path, name: str, sha256: str) -> bytes:
    """The bytes of ``path/name``, if they are the ones :func:`save` wrote."""
    data = (path / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{name} ({len(data)} bytes) does not match the SHA-256 in {STATE_FILE}: truncated or altered")
    return data


def _reason(error: BaseException) -> str:
    """One short line saying what is wrong with the folder."""
    if isinstance(error, json.JSONDecodeError):
        return f"{STATE_FILE} is not valid JSON ({error.msg} at char {error.pos})"
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"{Path(error.filename).name} is missing"
    if isinstance(error, (KeyError, IndexError, TypeError, AttributeError)):
        return f"{STATE_FILE} does not have the expected structure ({type(error).__name__}: {error})"
    return str(error) or type(error).__name__


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The adapter tensors and training state in ``path``, every file checked before any is used."""
    from safetensors.torch import load as tensors_from_bytes

    _refuse_legacy(path)
    try:
        record = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        if record.get("format") != FORMAT:
            raise ValueError(f"{STATE_FILE} is not in the format {FORMAT!r}")
        if "state_sha256" in record and _tree_sha256(record["state"]) != record["state_sha256"]:
            raise ValueError(f"the state in {STATE_FILE} does not match its SHA-256: altered")
        adapter = tensors_from_bytes(_checked_bytes(path, ADAPTER_FILE, record["sha256"][ADAPTER_FILE]))
        tensors = tensors_from_bytes(_checked_bytes(path, TENSORS_FILE, record["sha256"][TENSORS_FILE]))
        state = decode(record["state"], tensors)
        _check_position(path, state)
        return adapter, state
    except _DAMAGE as error:
        raise CheckpointUnreadable(f"checkpoint {path} is unreadable ({_reason(error)})") from error


MAX_POSITION = 10**9  # steps, epochs, micro-batches: far beyond any run (config.MAX_STEPS is 10**7)


def _whole(value, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_POSITION


def _check_position(path: Path, state: dict) -> None:
    """The position a resume starts from: whole numbers in range, the step the folder is named
    for, no more epochs than steps (ValueError if not)."""
    if not isinstance(state, dict) or not _whole(state.get("step")):
        raise ValueError(f"{STATE_FILE}: step must be a whole number of 0 or more")
    if (m := STEP_DIR.match(path.name)) and int(m.group(1)) != state["step"]:
        raise ValueError(f"{STATE_FILE}: step {state['step']} in the folder of step {int(m.group(1))}")
    for key in ("epoch", "micro_done", "since_best"):
        if key in state and not _whole(state[key]):
            raise ValueError(f"{STATE_FILE}: {key} must be a whole number in 0..{MAX_POSITION}, got {state[key]!r}")
    if state.get("epoch", 0) > state["step"] + 1:
        raise ValueError(f"{STATE_FILE}: epoch {state['epoch']} is past step {state['step']}")
    for key in ("optimizer", "scheduler", "scaler", "rng"):  # the state dicts a resume loads
        if key in state and not isinstance(state[key], dict):
            raise ValueError(f"{STATE_FILE}: {key} must be a mapping, got {type(state[key]).__name__}")
    best = state.get("best")
    if best is not None and not (isinstance(best, dict) and _whole(best.get("step"))):
        raise ValueError(f"{STATE_FILE}: best must be null or a record with a step, got {best!r}")


def read_state(path: Path) -> dict:
    """The training state in checkpoint ``path`` (all files checked), without touching a model.

    Raises :class:`CheckpointUnreadable` for a damaged folder, UserError for an older version's.
    """
    return _read(path)[1]


def load(path: Path, model, check: Callable[[Path, dict], None] | None = None) -> dict:
    """Load a checkpoint's adapter into ``model`` and return its training state.

    The model is only touched once every file has been read and checked, so a damaged checkpoint
    raises :class:`CheckpointUnreadable` with the model as it was; an older version's raises UserError.
    ``check(path, state)`` runs before the model is touched: it raises to refuse a checkpoint that
    reads whole but does not fit the run (another base, another adapter shape).
    """
    from peft.utils import set_peft_model_state_dict

    adapter, state = _read(path)
    if check is not None:
        check(path, state)
    set_peft_model_state_dict(model, adapter)
    return state


def resume_state(folder: Path, model, check: Callable[[Path, dict], None] | None = None) -> tuple[Path, dict] | None:
    """Load the newest checkpoint in ``folder`` that reads whole; None when there is none at all.

    A damaged one is skipped with one warning that names it, why, and what comes next; when
    none reads, UserError names them all. An older version's checkpoint, or one that ``check``
    refuses, stops it (UserError).
    """
    tried = _step_folders(folder)[::-1]
    for i, path in enumerate(tried):
        try:
            return path, load(path, model, check)
        except CheckpointUnreadable as error:
            nxt = f"falling back to {tried[i + 1]}" if i + 1 < len(tried) else "no older checkpoint left"
            log.warning("%s: %s", error, nxt)
    if tried:
        names = ", ".join(p.name for p in tried)
        raise UserError(f"no checkpoint in {folder} can be read (tried {names}): start a new run without --resume")
    return None


# --- resume compatibility ---------------------------------------------------------------------

_ABSENT = object()


def resume_differences(saved: dict, current: dict) -> list[str]:
    """Lines ``train.batch_size: checkpoint 8, now 16`` for each setting that differs between the
    ``run`` record in a checkpoint and the run about to resume it (nested dicts by dotted name).
    Tuples and lists with the same items count as equal, as JSON does not tell them apart."""
    return list(_differences(saved, current, ""))


def _differences(saved: dict, current: dict, prefix: str):
    for key in [*saved, *(k for k in current if k not in saved)]:
        old, new = saved.get(key, _ABSENT), current.get(key, _ABSENT)
        if isinstance(old, dict) and isinstance(new, dict):
            yield from _differences(old, new, f"{prefix}{key}.")
        elif _as_json(old) != _as_json(new):
            yield f"{prefix}{key}: checkpoint {_show(old)}, now {_show(new)}"


def _as_json(value):
    """``value`` with tuples as lists, the way JSON sees it."""
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    return value


def _show(value) -> str:
    return "not set" if value is _ABSENT else json.dumps(value, ensure_ascii=False, default=str)
