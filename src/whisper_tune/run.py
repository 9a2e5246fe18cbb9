"""The run folder, as a file format with one owner.

``train`` writes a folder that later commands (``evaluate``, ``merge``, ``export-ct2``,
``serve``, ``demo``) need alone, as litgpt's ``save_hyperparameters`` does::

    config.yaml            the resolved configuration (load_train_config reads it back)
    run.json               how the run went: steps, rates, best scores, versions (RunRecord)
    metrics.jsonl          one line per logged step; training.png, tensorboard/
    adapter/               the final adapter: PEFT files, processor, whisper_tune.json
    best/                  the adapter with the best eval score, and its eval.json
    checkpoints/step-N/    the last checkpoints (see checkpoint.py)
    processor/  prepared/{train,eval}/
    eval-NAME-SPLIT/       evaluation reports: summary.json, clips.jsonl (evaluate writes them
                           beside the adapter it scores)

Every reader and writer of these files goes through this module, so a renamed key is one
edit here. An adapter folder records its base in ``whisper_tune.json`` (:class:`AdapterMeta`)
so that ``evaluate --adapter DIR`` needs nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .checkpoint import write_json_atomically
from .errors import UserError
from .quantization import NONE

CONFIG_FILE = "config.yaml"
RECORD_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training.png"
ADAPTER_META = "whisper_tune.json"  # written beside adapter_config.json: what evaluate/merge need
BEST_SCORES = "eval.json"  # in best/: the scores that made it the best
EVAL_SUMMARY = "summary.json"
EVAL_CLIPS = "clips.jsonl"


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# ---- an adapter folder ---------------------------------------------------------------


@dataclass
class AdapterMeta:
    """What an adapter folder says of how it was trained (``whisper_tune.json``).

    A local base is recorded twice: as an absolute path, and relative to the adapter folder
    (``base_relative``), so the adapter finds it from any working folder and after the run
    and base folders move together. A hub id is recorded as it is."""

    base: str | None
    quantization: str = NONE  # the holding it was trained on (quantization.HOLDINGS)
    int8_threshold: float = 6.0
    language: str | None = None
    task: str | None = None
    base_relative: str | None = None  # a local base, relative to the adapter folder

    def write(self, folder: str | Path) -> None:
        folder = Path(folder)
        record = asdict(self)
        if self.base and Path(self.base).expanduser().exists():
            local = Path(self.base).expanduser().resolve()
            record["base"] = str(local)
            record["base_relative"] = os.path.relpath(local, folder.resolve())
        write_json_atomically(folder / ADAPTER_META, record)

    def resolve_base(self, folder: str | Path) -> str | None:
        """The base to load: the recorded local folder where it is, else where it sits
        relative to the adapter now; a hub id as recorded. A local base found in neither place
        is an error that names the recorded path and the way out (``--model``)."""
        if not self.base or Path(self.base).expanduser().exists():
            return self.base
        if self.base_relative:
            moved = (Path(folder) / self.base_relative).resolve()
            if moved.exists():
                return str(moved)
        if self.base_relative or looks_local(self.base):
            raise UserError(
                f"the adapter in {folder} was trained on {self.base}, which is not there any more: pass "
                f"--model PATH (the base model folder) to say where it is"
            )
        return self.base

    @classmethod
    def read(cls, folder: str | Path) -> AdapterMeta:
        """The adapter's record, or what PEFT's adapter_config.json says of its base."""
        folder = Path(folder)
        if not (folder / "adapter_config.json").is_file():
            raise UserError(
                f"{folder} is not a LoRA adapter folder (no adapter_config.json): give a run's adapter/ or best/ folder"
            )
        if not (folder / "adapter_model.safetensors").is_file():
            pickled = (folder / "adapter_model.bin").is_file()
            raise UserError(
                f"{folder} holds no adapter_model.safetensors"
                + (" (only adapter_model.bin, a pickle, which whisper-tune does not open)" if pickled else "")
                + ": re-save the adapter with PEFT's save_pretrained (safetensors is its default)"
            )
        if (folder / ADAPTER_META).is_file():
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in _read_json(folder / ADAPTER_META).items() if k in known})
        return cls(base=_read_json(folder / "adapter_config.json").get("base_model_name_or_path"))


def looks_local(name: str) -> bool:
    """A path rather than a hub id (``owner/name``): absolute, ./- or ~-relative, or deeper."""
    return name.startswith((".", "/", "~")) or name.count("/") != 1


def write_adapter_meta(folder: str | Path, cfg, language: str | None, task: str) -> None:
    """Record base, holding and language (from a ``ModelConfig``) next to an adapter."""
    AdapterMeta(cfg.base, cfg.quantization, cfg.int8_threshold, language, task).write(folder)


# ---- evaluation reports --------------------------------------------------------------


def write_eval_report(out_dir: str | Path, summary: dict, clips: list[dict]) -> Path:
    """``summary.json`` and ``clips.jsonl`` (worst clips first) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomically(out / EVAL_SUMMARY, summary)
    ordered = sorted(clips, key=lambda c: -(c["wer"] or 0))
    (out / EVAL_CLIPS).write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in ordered), encoding="utf-8")
    return out


def read_eval_clips(report_dir: Path) -> list[dict]:
    """The per-clip rows of an evaluation report, worst first (empty when absent)."""
    path = Path(report_dir) / EVAL_CLIPS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def default_eval_dir(model: str | None, adapter: str | None, split: str, exact: bool) -> Path:
    """Where ``evaluate`` reports when not told: beside the adapter (in its run folder), else
    ``eval-MODEL-SPLIT`` here (a slice's brackets spelled out: ``validated_80pcto``)."""
    from .slices import folder_name

    split = folder_name(split)
    if adapter:
        suffix = "-exact" if exact else ""
        return Path(adapter).resolve().parent / f"eval-{Path(adapter).name}-{split}{suffix}"
    return Path(f"eval-{Path(model).name}-{split}")


# ---- the run folder ------------------------------------------------------------------


@dataclass
class RunRecord:
    """``run.json``: how a run went. Keys this version does not know (peak memory figures,
    keys of later versions) are kept in ``extra``; keys an older record lacks take defaults."""

    config: dict = field(default_factory=dict)  # the resolved TrainConfig, as config.yaml
    world_size: int = 1
    base_model: str | None = None
    quantization: str | None = None
    parameters: dict = field(default_factory=dict)  # trainable, total, trainable_percent
    steps: int = 0
    finished: bool = False
    resumed_from: str | None = None
    final_train_loss: float | None = None
    best: dict | None = None  # {"step", "wer", "cer"} of the best evaluation
    best_is_base: bool | None = None  # the best evaluation was step 0: training never beat the base
    early_stopped_at: int | None = None  # the step eval.patience stopped the run at
    samples_per_s: float = 0.0  # overall: the whole loop, warm-up, loader starts and evaluations included
    steady_samples_per_s: float | None = None  # training steps only (reporting.Throughput)
    wall_s: float = 0.0
    environment: dict = field(default_factory=dict)  # versions and hardware
    extra: dict = field(default_factory=dict)  # peak memory figures (peak_gpu_gib, ...)

    def to_dict(self) -> dict:
        """The JSON layout: the fields, with the ``extra`` figures at the top level."""
        data = asdict(self)
        extra = data.pop("extra")
        return data | extra

    @classmethod
    def from_dict(cls, data: dict) -> RunRecord:
        if not isinstance(data, dict):
            raise TypeError(f"expected a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: data[k] for k in known & data.keys()}, extra={k: v for k, v in data.items() if k not in known})


def adapter_is_base(folder: str | Path) -> bool:
    """Whether ``folder`` is a best/ adapter chosen at step 0, before any training (its
    eval.json says so): merging or exporting it gives the base model back."""
    try:
        data = _read_json(Path(folder) / BEST_SCORES)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("step") == 0


BASE_IS_BEST = (
    "fine-tuning did not beat the base model on the eval split: best/ is the base itself (step 0); "
    "look at the report card, then try more or other data, a lower learning rate or fewer steps"
)


class RunDir:
    """The paths of a run folder and typed reads and writes of its records."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config_file = property(lambda self: self.path / CONFIG_FILE)
    record_file = property(lambda self: self.path / RECORD_FILE)
    metrics_file = property(lambda self: self.path / METRICS_FILE)
    plot_file = property(lambda self: self.path / PLOT_FILE)
    adapter = property(lambda self: self.path / "adapter")
    best = property(lambda self: self.path / "best")
    checkpoints = property(lambda self: self.path / "checkpoints")
    processor = property(lambda self: self.path / "processor")

    def prepared(self, which: str) -> Path:
        """The prepared split ``train`` or ``eval`` of this run."""
        return self.path / "prepared" / which

    def write_config(self, cfg) -> None:
        """``config.yaml``: the resolved TrainConfig, loadable as a recipe."""
        self.path.mkdir(parents=True, exist_ok=True)
        data = dataclasses.asdict(cfg)
        self.config_file.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")

    def write_record(self, record: RunRecord) -> None:
        write_json_atomically(self.record_file, record.to_dict())

    def read_record(self) -> RunRecord | None:
        """``run.json``, or None for a run that has not finished a first attempt."""
        if not self.record_file.is_file():
            return None
        try:
            return RunRecord.from_dict(_read_json(self.record_file))
        except (ValueError, TypeError) as e:
            raise UserError(f"{self.record_file} is not a whisper-tune run record ({e})") from None

    def finished_adapter(self) -> Path | None:
        """The final adapter, when training completed."""
        return self.adapter if (self.adapter / "adapter_config.json").is_file() else None

    def serving_adapter(self) -> Path:
        """The adapter to use: ``best/`` when training kept one, else ``adapter/``."""
        for folder in (self.best, self.adapter):
            if (folder / "adapter_config.json").is_file():
                return folder
        raise UserError(f"{self.path} holds no adapter (best/ or adapter/): give a whisper-tune train output folder")

    def best_is_base(self) -> bool:
        """Whether the best adapter is the untrained one (step 0): training never beat the base."""
        return adapter_is_base(self.best)

    def write_best(self, folder: Path, scores: dict) -> None:
        """The scores that made an adapter the best, beside it."""
        write_json_atomically(Path(folder) / BEST_SCORES, scores)

    def eval_reports(self) -> list[tuple[Path, dict]]:
        """(folder, summary) of the evaluation reports about this run, oldest first: those in
        it (``evaluate --adapter RUN/best``) and those beside it that scored one of its
        adapters or a base model (the demo's ``eval-before``/``eval-after``)."""
        found = sorted(
            {*self.path.glob(f"*/{EVAL_SUMMARY}"), *self.path.parent.glob(f"*/{EVAL_SUMMARY}")},
            key=lambda p: p.stat().st_mtime,
        )
        reports = []
        for path in found:
            summary = _read_json(path)
            adapter = (summary.get("model") or {}).get("adapter")
            if adapter and not Path(adapter).resolve().is_relative_to(self.path.resolve()):
                continue  # another run's adapter
            reports.append((path.parent, summary))
        return reports

    @classmethod
    def of_adapter(cls, adapter_dir: str | Path) -> RunDir | None:
        """The run an adapter folder came from (the folder holding it), if it recorded one."""
        adapter_dir = Path(adapter_dir)
        for candidate in (adapter_dir, adapter_dir.parent):
            if (candidate / RECORD_FILE).is_file():
                return cls(candidate)
        return None


# ---- adapters by name (api and serve) --------------------------------------------------

SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")  # what a served adapter's name may be
CARD_JSON = "card.json"  # the report card's numbers and headline (report_card.py writes it)


def default_model_id(model: str | None, adapter: str | None) -> str:
    """The name a served model goes by: its folder's name (``run/best`` -> ``run-best`` for the
    usual adapter names, so two runs' adapters do not both read ``best``)."""
    path = Path(adapter or model or "whisper")
    name = path.name or "whisper"
    if name in ("best", "adapter", "final") and path.parent.name:
        name = f"{path.parent.name}-{name}"
    return name


def adapter_ids(specs: list[str], model: str | None = None, model_id: str | None = None) -> dict[str, str]:
    """``--adapter`` values (``NAME=PATH`` or a plain ``PATH``) as name -> folder, in order (the
    first is the default). A plain PATH's name is ``model_id`` if given, else the folder's name
    (:func:`default_model_id`). Duplicate or malformed names are refused in one line."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or "/" in name or "\\" in name:
            name, path = None, spec
        if name is None:
            name = model_id if model_id and len(specs) == 1 else default_model_id(model, path)
        if not SERVED_NAME.match(name):
            raise UserError(f"--adapter {spec}: the name '{name}' must be letters, digits, '.', '_', '-' or ':'")
        if name in out:
            raise UserError(f"--adapter: two adapters are named '{name}'; give each its own with NAME=PATH")
        out[name] = path
    return out


def adapters_in(folder: str | Path) -> list[str]:
    """``--adapters-dir``: a folder of run folders (or of adapter folders) as ``NAME=PATH``
    specs for :func:`adapter_ids`, in name order: each run's serving adapter (``best/``, else
    ``adapter/``), named for its run. Sub-folders that hold no adapter (evaluation reports, a
    corpus) are not runs and are passed over; a folder with none is refused."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"--adapters-dir {root}: no such folder")
    specs = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if (sub / "adapter_config.json").is_file():
            specs.append(f"{sub.name}={sub}")
            continue
        try:
            specs.append(f"{sub.name}={RunDir(sub).serving_adapter()}")
        except UserError:
            continue
    if not specs:
        raise UserError(
            f"--adapters-dir {root} holds no run folder (a sub-folder with best/ or adapter/) "
            "and no adapter folder (adapter_config.json): give the folder your runs were trained into"
        )
    return specs


def card_headline(adapter_dir: str | Path) -> str | None:
    """The headline of the report card beside an adapter (``card.json``, which training copies
    there) or in its run folder, or None."""
    run = RunDir.of_adapter(adapter_dir)
    for folder in (Path(adapter_dir), *([run.path] if run else [])):
        try:
            headline = _read_json(folder / CARD_JSON).get("headline")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(headline, str):
            return headline
    return None
