"""Run configuration: YAML files validated into dataclasses, with ``key=value`` overrides.

Every field has a default and a one-line note. Unknown keys and values of the wrong type
fail with the dotted key named (``data.langauge: unknown key``) before anything heavy
loads, because a typo that silently falls back to a default wastes a GPU-day.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .audio import CHUNK_SECONDS
from .errors import UserError

TASKS = ("transcribe", "translate")
EVALUATE_MAX_NEW_TOKENS = 255  # `whisper-tune evaluate`: the recipe's final evaluation loop (128 while training)
MAX_SECONDS = float(CHUNK_SECONDS)  # Whisper sees one 30 s window per training example


def _positive(obj, section: str, *names: str) -> None:
    """Each named field is a finite number above zero (NaN fails every comparison, so it is
    named rather than slipping through)."""
    for name in names:
        value = getattr(obj, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{section}.{name} must be positive, got {value}")


def _at_least_zero(obj, section: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{section}.{name} must be zero or more, got {value}")


AUTO = "auto"  # batch_size / gradient_checkpointing: chosen by a measured probe (whisper_tune.fit)
MEMORY_UNITS = {"gib": 2**30, "g": 2**30, "gb": 10**9, "mib": 2**20, "m": 2**20, "mb": 10**6}


def parse_memory(text: str) -> int:
    """Bytes of a size such as ``16GiB``, ``12.5 GiB``, ``16GB`` or ``8000MiB`` (G and M alone
    are binary, as nvidia-smi's GiB); ValueError, naming the forms, for anything else."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]+)\s*", str(text))
    unit = MEMORY_UNITS.get(m.group(2).lower()) if m else None
    if unit is None or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a memory size: write it as 16GiB, 12.5GiB, 16GB or 8000MiB")
    return int(float(m.group(1)) * unit)


def _shares(obj, section: str, *names: str) -> None:
    """Each named field is a share of samples in [0, 1): 1 would leave no sample of its own."""
    for name in names:
        value = getattr(obj, name)
        if not (math.isfinite(value) and 0 <= value < 1):
            raise ValueError(f"{section}.{name} must be a share of samples in [0, 1), got {value!r}")


@dataclass
class ReplaySettings:
    """``data.replay``: clips of another language mixed into training, against forgetting it
    (``whisper_tune.replay``)."""

    source: str | None = None  # a prepared folder or any data source of another language; null: no replay
    language: str = "en"  # the replayed clips' language: their labels carry its token
    split: str = "train"  # the split of source that is replayed
    share: float = 0.0  # share of training samples replaced by replayed clips; 0 = off

    def __post_init__(self):
        _shares(self, "data.replay", "share")
        if self.share > 0 and not self.source:
            raise ValueError("data.replay.share needs data.replay.source (a split of another language)")


@dataclass
class DataConfig:
    """Where the speech comes from and how it is read (see ``whisper_tune.sources``)."""

    source: str = "demo"  # Common Voice folder, mdc:ID, manifest, dataset/prepared folder, hub id; "demo"
    language: str = "mr"  # Whisper language code or English name
    task: str = "transcribe"  # "transcribe" or "translate"
    train_split: str = "train+dev"  # the recipe trains on train+validation
    eval_split: str = "test"
    audio_column: str | None = None  # audio column of a manifest or dataset (unset: guess audio, path, ...)
    text_column: str | None = None  # transcript column (unset: guess text, sentence, ...)
    streaming: bool = False  # read a Hugging Face dataset as it downloads
    config_name: str | None = None  # Hugging Face dataset configuration (e.g. a language code)
    max_seconds: float = MAX_SECONDS  # longer clips are rejected and listed, never truncated
    replay: ReplaySettings = field(default_factory=ReplaySettings)  # another language's clips (share 0: off)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"data.task must be 'transcribe' or 'translate', got {self.task!r}")
        if not 0 < self.max_seconds <= MAX_SECONDS:
            raise ValueError(f"data.max_seconds must be in (0, {MAX_SECONDS:g}], got {self.max_seconds!r}")


QUANTIZATIONS = ("int8", "int8-wo", "fp8", "nf4", "none")
WHISPER_LINEARS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")  # what LoRA can wrap in Whisper
ATTENTION = ("sdpa", "eager")
ENCODER_WINDOWS = ("full", "longest")  # 30 s windows always | the batch's longest clip (encoder_window.py)
LR_SCHEDULES = ("linear", "cosine", "constant")  # after the warm-up: to zero in a line, in a half cosine, flat
LORA_PRESETS = {
    "qv": ["q_proj", "v_proj"],  # the reference recipe
    "attn": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "all-linear": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


@dataclass
class ModelConfig:
    """The base checkpoint and how it is held in memory."""

    base: str = "openai/whisper-large-v2"  # hub id or local folder
    # int8-wo (the default: int8 weights, one scale per row, dequantized inside each Linear:
    # 8-bit memory at bf16 speed) | int8 (bitsandbytes LLM.int8: the recipe's exact numerics,
    # 2-5x slower on a GPU) | fp8 (E4M3 weights, fp8 matmuls forward and backward on cards
    # with fp8 tensor cores; int8-wo elsewhere) | nf4 (4-bit, double quant) | none (bf16/fp16/fp32)
    quantization: str = "int8-wo"
    int8_threshold: float = 6.0  # LLM.int8 outlier threshold; 0 = all-int8 matmuls (faster, less exact)
    # recompute activations: less memory, about 30 % slower; a number in (0, 1) recomputes
    # that share of the layers (0.5: half the activation memory of none, half the extra time);
    # auto: the share that trains fastest within the GPU's memory, measured (whisper_tune.fit)
    gradient_checkpointing: bool | float | str = True
    attn_implementation: str = "sdpa"  # "sdpa" or "eager"
    # full: every clip padded to Whisper's 30 s window | longest: the encoder sees the batch's
    # longest clip in whole seconds (positional embeddings sliced, as whisper.cpp's audio_ctx):
    # on 2-6 s clips most of the encoder's work; long-form transcription keeps 30 s windows
    encoder_window: str = "full"

    def __post_init__(self):
        if self.encoder_window not in ENCODER_WINDOWS:
            raise ValueError(
                f"model.encoder_window must be one of {', '.join(ENCODER_WINDOWS)}, got {self.encoder_window!r}"
            )
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"model.quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        if self.attn_implementation not in ATTENTION:
            raise ValueError(f"model.attn_implementation must be sdpa or eager, got {self.attn_implementation!r}")
        share = self.gradient_checkpointing
        if share != AUTO and (isinstance(share, str) or not 0 <= float(share) <= 1):
            raise ValueError(
                f"model.gradient_checkpointing must be true, false, a share of layers in [0, 1] or auto, got {share!r}"
            )


@dataclass
class LoraSettings:
    """The LoRA adapters: what is trained."""

    r: int = 32  # rank
    alpha: int = 64  # scaling numerator (scale = alpha / r)
    dropout: float = 0.05
    # preset (qv, attn, all-linear) or module names; all-linear generalized best in the study
    # (benchmarks/results/study-base-h200/), qv is the reference recipe's
    targets: str | list[str] = "all-linear"
    freeze_encoder: bool = False  # adapters in the decoder only: faster, for text-domain shifts
    # the decoder's rank (null: r): a smaller one leaves the decoder less room to learn the
    # training sentences by heart (alpha scales with it, so alpha / rank stays the same)
    decoder_r: int | None = None

    def __post_init__(self):
        if isinstance(self.targets, str) and self.targets not in LORA_PRESETS:
            raise ValueError(
                f"lora.targets must be one of {', '.join(LORA_PRESETS)} or a list of module names, got {self.targets!r}"
            )
        if not self.target_modules():
            raise ValueError(f"lora.targets is empty: use a preset ({', '.join(LORA_PRESETS)}) or module names")
        if self.r <= 0 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError("lora.r and lora.alpha must be positive and lora.dropout in [0, 1)")
        if self.decoder_r is not None and self.decoder_r <= 0:
            raise ValueError(f"lora.decoder_r must be positive, or null for lora.r; got {self.decoder_r}")
        unknown = [t for t in self.target_modules() if t.rsplit(".", 1)[-1] not in WHISPER_LINEARS]
        if unknown:
            raise ValueError(
                f"lora.targets: {', '.join(unknown)} is not a Linear layer of Whisper; use a preset "
                f"({', '.join(LORA_PRESETS)}) or names among {', '.join(WHISPER_LINEARS)}"
            )

    def target_modules(self) -> list[str]:
        return LORA_PRESETS[self.targets] if isinstance(self.targets, str) else list(self.targets)


MAX_LEARNING_RATE = 1.0  # LoRA's rates are about 1e-4..1e-2; above 1 is a typo (1e-3 -> 1e3)
MAX_STEPS = 10**7  # steps: years on one GPU
MAX_ACCUM = 4096  # micro-batches per optimizer step


@dataclass
class TrainSettings:
    """The optimisation loop."""

    output_dir: str = "runs/whisper-tune"  # the run folder: checkpoints, adapter, metrics, plot
    epochs: float = 3.0
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    # clips per device per micro-batch; auto: the largest batch (with the least recomputation,
    # see model.gradient_checkpointing) that trains fastest in the GPU's memory, by a short
    # measured probe cached per GPU and settings, accumulating to keep effective_batch
    batch_size: int | str = 8
    grad_accum: int = 1  # micro-batches per optimizer step (with batch_size auto: chosen, keep 1)
    effective_batch: int | None = None  # with batch_size auto: clips per optimizer step, kept exact (null: 8)
    # cap on this run's GPU memory ("16GiB"), held by torch, within which batch_size auto
    # plans (null: the GPU's free memory when the run starts)
    gpu_memory: str | None = None
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    lr_schedule: str = "linear"  # after warm-up: linear (to zero, the recipe's) | cosine | constant
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 disables clipping
    compile: bool = False  # torch.compile each layer (CUDA): ~15 % faster steps after a ~1 min compile
    mixed_precision: str = (
        "auto"  # auto (bf16 on GPUs that have it, else fp16; CPU: bf16 with AMX, else fp32) | bf16 | fp16 | no
    )
    group_by_length: bool = True  # batches of similar length: less padding in the labels
    num_workers: int = 2  # DataLoader workers reading and padding audio (and, on the CPU, computing log-mel)
    seed: int = 42
    log_every: int = 10  # steps between metric lines
    save_every: int = 200  # steps between checkpoints (and one at the end)
    keep_last: int = 2  # checkpoints kept besides the best one
    on_nan: str = "stop"  # stop (keep the last good checkpoint) | skip (drop the batch and go on)
    label_smoothing: float = 0.0  # share of each target's probability spread over the vocabulary
    # adapter/ is the mean of the last N checkpoints' adapters (0: the last one), evaluated as
    # a candidate for best/; needs keep_last >= N and save_every small enough to write N
    average_last: int = 0

    def __post_init__(self):
        if self.mixed_precision not in ("auto", "bf16", "fp16", "no"):
            raise ValueError(f"train.mixed_precision must be auto, bf16, fp16 or no, got {self.mixed_precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"train.lr_schedule must be linear, cosine or constant, got {self.lr_schedule!r}")
        if self.on_nan not in ("stop", "skip"):
            raise ValueError(f"train.on_nan must be stop or skip, got {self.on_nan!r}")
        self._check_batch()
        _positive(self, "train", "grad_accum", "save_every", "log_every", "keep_last", "learning_rate")
        _at_least_zero(self, "train", "warmup_steps", "weight_decay", "max_grad_norm", "num_workers")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.average_last < 0 or self.average_last == 1:
            raise ValueError(f"train.average_last must be 0 (off) or at least 2 checkpoints, got {self.average_last}")
        if self.average_last > self.keep_last:
            raise ValueError(
                f"train.average_last={self.average_last} averages the last {self.average_last} checkpoints: "
                f"set train.keep_last to at least {self.average_last}"
            )
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"train.seed must be in [0, 2**32), got {self.seed}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"train.max_steps must be positive, or null to train by epochs; got {self.max_steps}")
        for name, most in (("learning_rate", MAX_LEARNING_RATE), ("max_steps", MAX_STEPS), ("grad_accum", MAX_ACCUM)):
            if (getattr(self, name) or 0) > most:
                raise ValueError(f"train.{name} = {getattr(self, name)!r} is absurd: at most {most:g}")
        if self.max_steps is None and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise ValueError(f"train.epochs must be positive (or set train.max_steps), got {self.epochs}")
        if self.gpu_memory is not None:
            try:
                parse_memory(self.gpu_memory)
            except ValueError as e:
                raise ValueError(f"train.gpu_memory: {e}") from None

    def _check_batch(self) -> None:
        """An int batch_size above zero, or auto with the effective batch it keeps."""
        if self.batch_size == AUTO:
            if self.grad_accum != 1:
                raise ValueError(
                    "train.grad_accum is chosen by train.batch_size=auto: set train.effective_batch "
                    "(clips per optimizer step) instead"
                )
            if self.effective_batch is not None and not 0 < self.effective_batch <= MAX_ACCUM:
                raise ValueError(f"train.effective_batch must be in [1, {MAX_ACCUM}], got {self.effective_batch}")
            return
        if isinstance(self.batch_size, str) or self.batch_size <= 0:
            raise ValueError(f"train.batch_size must be a whole number above 0 or auto, got {self.batch_size!r}")
        if self.effective_batch is not None:
            raise ValueError(
                "train.effective_batch is for train.batch_size=auto; with a fixed batch size the effective "
                "batch is batch_size x grad_accum"
            )


@dataclass
class EvalSettings:
    """Word error rate while training: generation on the eval split."""

    every: int = 0  # steps between evaluations; 0 = at the end of each epoch; -1 = never
    max_samples: int | None = None  # evaluate on the first N clips only (faster)
    batch_size: int = 16
    max_new_tokens: int = 128  # the recipe's generation_max_length while training
    metric: str = "wer"  # wer | cer: picks the best adapter
    # stop after this many evaluations in a row without a better score (null: never); the
    # best adapter becomes adapter/. Fine-tunes of large-v3/turbo can get worse while the loss falls
    patience: int | None = None
    # evaluate the untrained adapter (the base itself) at step 0 too, as a candidate for best/:
    # the best adapter is then never worse than the base on the eval split, and a run whose
    # training did not beat the base says so
    base_candidate: bool = True
    # the report card (base and fine-tune side by side on non-speech, loops, long-form,
    # English, language ID) at the end of training, in card.md/card.json: null = on with a
    # GPU (seconds for Whisper base), off on a CPU (minutes: set true to have it there too)
    card: bool | None = None

    def __post_init__(self):
        if self.metric not in ("wer", "cer"):
            raise ValueError(f"eval.metric must be wer or cer, got {self.metric!r}")
        _positive(self, "eval", "batch_size", "max_new_tokens")
        if self.every < -1:
            raise ValueError(f"eval.every must be -1 (never), 0 (each epoch) or a number of steps, got {self.every}")
        if self.patience is not None and self.patience <= 0:
            raise ValueError(f"eval.patience must be positive or null (never stop early), got {self.patience}")
        if self.max_samples is not None and self.max_samples <= 0:
            raise ValueError(f"eval.max_samples must be positive or null (all clips), got {self.max_samples}")


def _range(obj, section: str, name: str, low: float, high: float) -> None:
    """A [min, max] pair inside [low, high]."""
    value = getattr(obj, name)
    if len(value) != 2 or not all(math.isfinite(v) for v in value) or not low <= value[0] <= value[1] <= high:
        raise ValueError(f"{section}.{name} must be [min, max] with {low:g} <= min <= max <= {high:g}, got {value!r}")


@dataclass
class AugmentSettings:
    """Training-time augmentation (``whisper_tune.augment``): never applied in evaluation or
    transcription. Each perturbation is drawn per clip from (seed, epoch, clip), so a resumed
    run sees the same audio."""

    enabled: bool = True  # the master switch (the reference recipe sets false)
    spec_augment: bool = True  # Whisper's own SpecAugment (config.apply_spec_augment) on the log-mel
    mask_time_prob: float = 0.05  # share of time frames masked, in spans of mask_time_length
    mask_time_length: int = 10  # frames (10 ms each) per time mask
    mask_time_min_masks: int = 2  # at least this many time masks per clip
    mask_feature_prob: float = 0.0  # share of mel bins masked, in spans of mask_feature_length
    mask_feature_length: int = 10  # mel bins per feature mask
    # waveform perturbations: off by default (on the demo corpus they added nothing to
    # SpecAugment: benchmarks/results/study-base-h200/); for recordings unlike the training's
    speed_prob: float = 0.0  # chance a clip is played faster or slower (tempo and pitch together)
    speed_range: list[float] = field(default_factory=lambda: [0.9, 1.1])  # speed factors
    gain_prob: float = 0.0  # chance of a louder or quieter clip
    gain_db: list[float] = field(default_factory=lambda: [-6.0, 6.0])  # gain in dB
    noise_prob: float = 0.0  # chance of added noise (generated, or from noise_dir)
    snr_db: list[float] = field(default_factory=lambda: [10.0, 30.0])  # signal-to-noise ratio in dB
    noise_dir: str | None = None  # a folder of noise recordings mixed in half of the noisy clips
    pitch_prob: float = 0.0  # chance of a pitch shift at the same tempo (slower to compute)
    pitch_semitones: list[float] = field(default_factory=lambda: [-2.0, 2.0])  # pitch shift

    def __post_init__(self):
        for name in ("mask_time_prob", "mask_feature_prob", "speed_prob", "gain_prob", "noise_prob", "pitch_prob"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"augment.{name} must be a probability in [0, 1], got {value!r}")
        _positive(self, "augment", "mask_time_length", "mask_feature_length")
        _at_least_zero(self, "augment", "mask_time_min_masks")
        _range(self, "augment", "speed_range", 0.5, 2.0)
        _range(self, "augment", "gain_db", -40.0, 40.0)
        _range(self, "augment", "snr_db", -10.0, 100.0)
        _range(self, "augment", "pitch_semitones", -12.0, 12.0)


NONSPEECH_TARGETS = ("nospeech", "empty")


MAX_JOINED_CLIPS = 8  # clips of a joined timestamp sample; Common Voice clips are ~5 s, a window 30 s


@dataclass
class PreserveSettings:
    """Training that keeps what Whisper could do (``whisper_tune.preserve``): each switch is a
    share of training samples, drawn per clip from (seed, epoch, clip), so a resumed run sees
    the same batches. Non-speech and joined timestamp samples are on by default: on the GPU demo
    they took text on non-speech from 100 % to 0 % (6 of 6 seeds) and long-form WER from 91 % to
    43 %, unseen WER unchanged (benchmarks/results/card-study-h100-r4/). Prompts stay off (no card
    line gained); the reference recipe sets every share to 0, value for value."""

    nonspeech_share: float = 0.1  # share of samples replaced by non-speech clips with the no-speech target
    # empty: the forced prefix, then <|endoftext|> (no text), what every runtime that sets the language
    # decodes; nospeech: <|startoftranscript|><|nospeech|>, read only by a no-speech threshold, before the
    # prefix (the card study: text on 100 % of non-speech clips after training it, 3 seeds); empty, half of it in
    # the time-stamp form that transcribe decodes: 0 % in 6 of 6 seeds
    nonspeech_target: str = "empty"
    noise_dir: str | None = None  # a folder of the user's noise recordings: half the non-speech clips
    timestamp_share: float = 0.5  # share of samples with timestamp targets (<|0.00|> text <|end|>)
    # a timestamp sample joins 1 to this many training clips into one window, each clip its own
    # segment (<|t0|> text <|t1|><|t2|> text <|t3|>...), as long-form decoding meets speech; 1: the clip alone
    timestamp_clips: int = 4
    prompt_share: float = 0.0  # share of samples with another clip's text as a <|startofprev|> prompt

    def __post_init__(self):
        _shares(self, "preserve", "nonspeech_share", "timestamp_share", "prompt_share")
        if not isinstance(self.timestamp_clips, int) or not 1 <= self.timestamp_clips <= MAX_JOINED_CLIPS:
            raise ValueError(
                f"preserve.timestamp_clips must be a whole number from 1 to {MAX_JOINED_CLIPS}, "
                f"got {self.timestamp_clips!r}"
            )
        if self.nonspeech_target not in NONSPEECH_TARGETS:
            raise ValueError(f"preserve.nonspeech_target must be nospeech or empty, got {self.nonspeech_target!r}")


@dataclass
class TrainConfig:
    """A whole training run, as written in a recipe YAML file."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    preserve: PreserveSettings = field(default_factory=PreserveSettings)

    def __post_init__(self):
        swapped = self.preserve.nonspeech_share + self.data.replay.share
        if swapped >= 1:
            raise ValueError(
                f"preserve.nonspeech_share + data.replay.share must be below 1 (no training clip left), got {swapped:g}"
            )


def recipe_path(name: str | Path) -> Path:
    """A recipe file by path, or by the name of one shipped with whisper-tune ("demo")."""
    path = Path(name)
    if path.is_file():
        return path
    from importlib import resources

    shipped = Path(str(resources.files("whisper_tune") / "recipes")) / f"{path.stem}.yaml"
    return shipped if shipped.is_file() and path.parent in (Path("."), Path("recipes")) else path


def load_train_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """A recipe file (or shipped recipe name) plus ``key=value`` overrides, validated."""
    data = load_yaml(recipe_path(path)) if path else {}
    return from_dict(TrainConfig, apply_overrides(data, list(overrides)))


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


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (two ``train:`` blocks: PyYAML
    keeps the last and drops the first without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (line {key_node.start_mark.line + 1})", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with the file named in any error."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} not found (recipes live in recipes/)")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as e:
        raise UserError(f"{p} is not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{p} must hold a mapping of sections")
    return data


def field_notes(cls) -> dict[str, str]:
    """Each field's one-line note (the comment after its default), for help texts: the CLI
    takes its defaults and help from the dataclasses instead of repeating them."""
    import inspect
    import re

    pattern = re.compile(r"^\s+(\w+)\s*:[^=#]+=.*?#\s*(.+)$")
    notes = {}
    for line in inspect.getsource(cls).splitlines():
        if m := pattern.match(line):
            notes[m.group(1)] = m.group(2).strip()
    return notes


def to_dict(obj) -> dict:
    """A dataclass config as plain data, ready for YAML or JSON."""
    return dataclasses.asdict(obj)
