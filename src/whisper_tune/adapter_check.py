"""An adapter folder checked once, before anything loads it.

PEFT trusts ``adapter_config.json`` and the safetensors file: ``r: 0`` or a non-LoRA
``peft_type`` end in a traceback, keys that match no module load nothing (a "merge" then
writes the base itself), and NaN weights or a NaN ``lora_alpha`` write a merged model of
NaNs. :func:`check_adapter` reads the three files itself -- the safetensors header as bytes,
bounded, before torch sees the file -- and raises one :class:`UserError` that lists every
problem, so ``merge``, ``export-*``, ``evaluate``, ``transcribe``, ``serve`` and ``api``
refuse a damaged or crafted adapter in one line.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

from .config import QUANTIZATIONS, TASKS, WHISPER_LINEARS
from .errors import UserError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
META_FILE = "whisper_tune.json"  # run.ADAPTER_META
MAX_HEADER = 100 * 2**20  # bytes: a LoRA adapter of large-v2 at r 256 has a header of about 200 KB
MAX_RANK = 4096
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight$")


def _json(path: Path, problems: list[str]):
    """The JSON object in ``path``, or None with the reason added to ``problems``."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        problems.append(f"{path.name} is not UTF-8 text (byte {e.start})")
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        problems.append(f"{path.name} is not valid JSON ({e.msg} at line {e.lineno})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name} must hold a JSON object, not {type(data).__name__}")
        return None
    return data


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _check_config(cfg: dict, problems: list[str]) -> tuple[tuple[int | None, dict[str, int]], list[str]]:
    """The rank (r and its per-module patterns) and target module names of a sound LoRA config."""
    if cfg.get("peft_type") != "LORA":
        problems.append(f"{CONFIG_FILE}: peft_type is {cfg.get('peft_type')!r}; whisper-tune loads LoRA adapters only")
    r = cfg.get("r")
    if not (isinstance(r, int) and not isinstance(r, bool) and 0 < r <= MAX_RANK):
        problems.append(f"{CONFIG_FILE}: r must be a whole number in 1..{MAX_RANK}, got {r!r}")
        r = None
    if not _finite_positive(cfg.get("lora_alpha")):
        problems.append(f"{CONFIG_FILE}: lora_alpha must be a finite number above 0, got {cfg.get('lora_alpha')!r}")
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        targets = [t for t in WHISPER_LINEARS if re.fullmatch(targets, f"model.encoder.layers.0.fc1.{t}", re.S)]
        targets = targets or [cfg["target_modules"]]
    if not (isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)):
        problems.append(f"{CONFIG_FILE}: target_modules must be a list of Whisper Linear names, got {targets!r}")
        targets = []
    unknown = [t for t in targets if t.rsplit(".", 1)[-1] not in WHISPER_LINEARS]
    if unknown:
        problems.append(
            f"{CONFIG_FILE}: target_modules {', '.join(map(repr, unknown))} name no Linear layer of Whisper "
            f"(known: {', '.join(WHISPER_LINEARS)})"
        )
    for key in ("modules_to_save", "layers_to_transform"):
        if cfg.get(key):
            problems.append(f"{CONFIG_FILE}: {key} is set ({cfg[key]!r}); whisper-tune adapters hold LoRA layers only")
    ranks = _patterns(cfg, "rank_pattern", problems, whole=True)
    _patterns(cfg, "alpha_pattern", problems, whole=False)
    return (r, ranks), targets


def _patterns(cfg: dict, key: str, problems: list[str], whole: bool) -> dict[str, int]:
    """``rank_pattern``/``alpha_pattern`` (``lora.decoder_r`` writes them): module-name
    patterns to positive numbers, whole ranks up to the rank limit."""
    value = cfg.get(key) or {}
    good = isinstance(value, dict) and all(
        isinstance(k, str) and _finite_positive(v) and (not whole or (isinstance(v, int) and v <= MAX_RANK))
        for k, v in value.items()
    )
    if good:
        try:
            for k in value:
                re.compile(k)
        except re.error:
            good = False
    if not good:
        problems.append(f"{CONFIG_FILE}: {key} must map module-name patterns to positive numbers, got {value!r}")
        return {}
    return value


def _rank_of(module: str, r: int, ranks: dict[str, int]) -> int:
    """The rank PEFT gives ``module``: PEFT's own pattern rule (``get_pattern_key``: the first
    pattern that matches the end of its name), else r."""
    from peft.utils.other import get_pattern_key

    return ranks.get(get_pattern_key(list(ranks), module), r)


def _check_meta(meta: dict, problems: list[str]) -> None:
    if meta.get("quantization", QUANTIZATIONS[-1]) not in QUANTIZATIONS:  # absent: none
        problems.append(
            f"{META_FILE}: quantization must be one of {', '.join(QUANTIZATIONS)}, got {meta.get('quantization')!r}"
        )
    if meta.get("task") not in (None, *TASKS):
        problems.append(f"{META_FILE}: task must be transcribe or translate, got {meta.get('task')!r}")
    for key in ("base", "language", "base_relative"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            problems.append(f"{META_FILE}: {key} must be text, got {meta[key]!r}")
    threshold = meta.get("int8_threshold", 6.0)
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        problems.append(f"{META_FILE}: int8_threshold must be a finite number of 0 or more, got {threshold!r}")
    if isinstance(meta.get("language"), str):
        from .processor import resolve_language

        try:
            resolve_language(meta["language"])
        except UserError:
            problems.append(f"{META_FILE}: language {meta['language']!r} is not a Whisper language")


def read_header(path: Path) -> dict:
    """A safetensors file's header, checked against the file's size before anything is
    allocated: a header length of 2**62 or a shape of 1e9 x 1e9 is refused here (ValueError)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes, too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER, size - 8):
            raise ValueError(f"its header claims {n} bytes; the file has {size}")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"its header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    data = size - 8 - n
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(spec, dict):
            raise ValueError(f"tensor {name!r} has no description")
        shape, offsets, dtype = spec.get("shape"), spec.get("data_offsets"), spec.get("dtype")
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"tensor {name!r} has an unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and 0 <= d < 2**40 for d in shape)):
            raise ValueError(f"tensor {name!r} has an impossible shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ValueError(f"tensor {name!r} has no valid data_offsets")
        start, end = offsets
        if not 0 <= start <= end <= data or end - start != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise ValueError(f"tensor {name!r} of shape {shape} does not fit the file's {data} data bytes")
    return header


def whisper_modules(config: dict) -> dict[str, tuple[int, int]]:
    """Every Linear LoRA can wrap in a Whisper of this config.json: name -> (in, out features)."""
    d, layers = config.get("d_model"), {}
    for side in ("encoder", "decoder"):
        ffn = config.get(f"{side}_ffn_dim")
        attentions = ("self_attn", "encoder_attn") if side == "decoder" else ("self_attn",)
        for i in range(int(config.get(f"{side}_layers") or 0)):
            stem = f"model.{side}.layers.{i}"
            for attn in attentions:
                for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    layers[f"{stem}.{attn}.{proj}"] = (d, d)
            layers[f"{stem}.fc1"], layers[f"{stem}.fc2"] = (d, ffn), (ffn, d)
    return layers


def _check_weights(
    path: Path, r: tuple[int | None, dict[str, int]], targets: list[str], base_config: dict | None, problems: list[str]
):
    try:
        header = read_header(path)
    except (OSError, ValueError) as e:
        problems.append(f"{WEIGHTS_FILE}: {e}")
        return
    names = [k for k in header if k != "__metadata__"]
    if not names:
        problems.append(f"{WEIGHTS_FILE} holds no tensors: it would change nothing")
        return
    modules = whisper_modules(base_config) if base_config else None
    matched, stray = set(), []
    for name in names:
        m = LORA_KEY.match(name)
        module = m and m.group("module")
        if not m or (targets and module.rsplit(".", 1)[-1] not in [t.rsplit(".", 1)[-1] for t in targets]):
            stray.append(name)
            continue
        if modules is not None and module not in modules:
            stray.append(name)
            continue
        shape = header[name]["shape"]
        if len(shape) != 2:
            problems.append(f"{WEIGHTS_FILE}: {name} has shape {shape}, not a matrix")
            continue
        rank = shape[0] if m.group("part") == "lora_A" else shape[1]
        want_rank = _rank_of(module, r[0], r[1]) if r[0] is not None else None
        if want_rank is not None and rank != want_rank:
            problems.append(f"{WEIGHTS_FILE}: {name} has rank {rank}, {CONFIG_FILE} says r = {want_rank}")
        if modules is not None:
            fan_in, fan_out = modules[module]
            other = shape[1] if m.group("part") == "lora_A" else shape[0]
            want = fan_in if m.group("part") == "lora_A" else fan_out
            if other != want:
                problems.append(f"{WEIGHTS_FILE}: {name} has shape {shape}; the base's layer needs {want} there")
        matched.add(module)
    if stray:
        problems.append(
            f"{WEIGHTS_FILE}: {len(stray)} of {len(names)} tensors match no LoRA layer of the base "
            f"(renamed or foreign keys, e.g. {stray[0]!r})"
        )
    if not problems:
        _check_finite(path, problems)


def _check_finite(path: Path, problems: list[str]) -> None:
    import torch
    from safetensors.torch import load_file

    bad = [name for name, t in load_file(str(path)).items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        problems.append(f"{WEIGHTS_FILE}: {len(bad)} tensors hold NaN or infinite values (e.g. {bad[0]})")


def base_config(base: str | None) -> dict | None:
    """A local base's config.json (None for a hub id, or one that does not read)."""
    path = Path(base).expanduser() / "config.json" if base else None
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def check_adapter(folder: str | Path, base: str | None = None) -> None:
    """Refuse (UserError, one line listing every problem) an adapter folder that PEFT would
    fail on, load silently wrong, or load as nothing; ``base`` (a local folder) adds the
    layer names and widths the tensors must fit."""
    folder = Path(folder)
    problems: list[str] = []
    r, targets = (None, {}), []
    cfg = _json(folder / CONFIG_FILE, problems) if (folder / CONFIG_FILE).is_file() else None
    if cfg is not None:
        r, targets = _check_config(cfg, problems)
    if (folder / META_FILE).is_file() and (meta := _json(folder / META_FILE, problems)) is not None:
        _check_meta(meta, problems)
        if base is None and isinstance(meta.get("base"), str):
            relative = meta.get("base_relative")
            moved = folder / relative if isinstance(relative, str) else None
            base = meta["base"] if Path(meta["base"]).expanduser().exists() or moved is None else str(moved)
    if (folder / WEIGHTS_FILE).is_file():
        _check_weights(folder / WEIGHTS_FILE, r, targets, base_config(base), problems)
    if problems:
        raise UserError(f"adapter {folder} cannot be used: {'; '.join(problems)}")
