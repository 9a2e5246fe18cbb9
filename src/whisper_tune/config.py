"""Run configuration: YAML files validated into dataclasses, with ``key=value`` overrides.

Every field has a default and a one-line note. Unknown keys and values of the wrong type
fail with the dotted key named (``data.langauge: unknown key``) before anything heavy
loads, because a typo that silently falls back to a default wastes a GPU-day.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


@dataclass
class DataConfig:
    """Where the speech comes from and how it is read (see ``whisper_tune.sources``)."""

    source: str = "demo"  # Common Voice folder, manifest, dataset folder or hub id; "demo" = the demo corpus
    language: str = "mr"  # Whisper language code or English name
    task: str = "transcribe"  # "transcribe" or "translate"
    train_split: str = "train+dev"  # the recipe trains on train+validation
    eval_split: str = "test"
    audio_column: str | None = None  # None: guess (audio, path, ...)
    text_column: str | None = None  # None: guess (text, sentence, ...)
    streaming: bool = False  # read a Hugging Face dataset as it downloads
    config_name: str | None = None  # Hugging Face dataset configuration (e.g. a language code)
    max_seconds: float = 30.0  # longer clips are rejected and listed, never truncated


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(value: Any, tp, key: str):
    """Check ``value`` against annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except UserError:
                continue
        raise UserError(f"{key}: expected {' or '.join(_type_name(o) for o in options)}, got {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise UserError(f"{key}: expected one of {', '.join(map(repr, typing.get_args(tp)))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # PyYAML reads 1e-3 (no dot) as a string: the classic learning-rate trap
            return float(value)
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, bool):
        raise UserError(f"{key}: expected {tp.__name__}, got {value!r}")
    if not isinstance(value, tp):
        raise UserError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls, data: Any, prefix: str = ""):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise UserError(f"{prefix + '.' if prefix else ''}{key}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{prefix + '.' if prefix else ''}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {e}") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` strings (values parsed as YAML) to a nested mapping."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not key=value (e.g. train.learning_rate=1e-4)")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with the file named in any error."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} not found (recipes live in recipes/)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{p} must hold a mapping of sections")
    return data


def to_dict(obj) -> dict:
    """A dataclass config as plain data, ready for YAML or JSON."""
    return dataclasses.asdict(obj)


__all__ = ["DataConfig", "apply_overrides", "from_dict", "load_yaml", "to_dict"]
