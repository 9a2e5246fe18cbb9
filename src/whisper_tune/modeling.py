"""Model loading: the base checkpoint (held as its :mod:`quantization` entry says), its
processor and generation settings, the LoRA adapters, and a base (+ adapter) ready to
generate.

How the base is held lives in ``quantization.py``; the patches that make a step fast in
``speedups.py``; an adapter folder's record of its base in ``run.py``. This module puts
them together in the two shapes the rest of the package needs: :func:`lora_model` (what
``train`` and ``bench train`` train) and :func:`load_for_inference` (what ``evaluate``,
``transcribe``, ``merge``, ``serve`` and ``bench transcribe`` decode with).

Language and task go into ``generation_config`` (``language``/``task`` plus the lookup
tables Whisper's ``generate`` needs), never into ``forced_decoder_ids``, which
transformers 5 deprecates.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapter_check import check_adapter
from .config import LoraSettings, ModelConfig
from .errors import UserError
from .patches import WRITTEN_FOR, Patch, register, usable
from .processor import (
    CONTROL_TOKENS,
    EOT,
    MAX_LABEL_TOKENS,
    N_LANGUAGES_V2,
    SOT,
    VOCAB_V2,
    VOCAB_V3,
    languages,
    offline_processor_dir,
    require_language_token,
)
from .quantization import FP8, NONE, Holding, fp8_unavailable, get_holding
from .run import AdapterMeta, looks_local
from .speedups import apply_speedups

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Architecture:
    """A Whisper size: what a random-weight model of it needs (tests, benchmarks)."""

    d_model: int
    encoder_layers: int
    decoder_layers: int
    heads: int
    ffn: int
    mel_bins: int = 80  # 128 from large-v3 on
    vocab: int = VOCAB_V2  # VOCAB_V3 from large-v3 on (a 100th language token, <|yue|>)

    @property
    def languages(self) -> int:
        """Language tokens in the vocabulary (what the offline processor needs to match it)."""
        return N_LANGUAGES_V2 + (self.vocab - VOCAB_V2)


ARCHITECTURES = {
    "tiny-test": Architecture(64, 2, 2, 2, 128),  # for tests: seconds on a CPU
    # for tests: large-v3-turbo's shape in miniature (128 mel bins, 51866 tokens, shallower decoder)
    "tiny-test-v3": Architecture(64, 2, 1, 2, 256, mel_bins=128, vocab=VOCAB_V3),
    "tiny": Architecture(384, 4, 4, 6, 1536),  # 39 M parameters
    "base": Architecture(512, 6, 6, 8, 2048),  # 74 M
    "small": Architecture(768, 12, 12, 12, 3072),  # 244 M
    "medium": Architecture(1024, 24, 24, 16, 4096),  # 769 M
    "large-v2": Architecture(1280, 32, 32, 20, 5120),  # 1.55 B, the reference recipe's model
    "large-v3": Architecture(1280, 32, 32, 20, 5120, mel_bins=128, vocab=VOCAB_V3),  # 1.55 B
    "large-v3-turbo": Architecture(1280, 32, 4, 20, 5120, mel_bins=128, vocab=VOCAB_V3),  # 809 M: 4 decoder layers
}


def architecture_config(name: str, **overrides):
    """A multilingual WhisperConfig of a named size (random weights for tests and benchmarks:
    speed and memory do not depend on the values); ``overrides`` are WhisperConfig fields."""
    from transformers import WhisperConfig

    arch = ARCHITECTURES[name]
    fields = dict(
        vocab_size=arch.vocab,
        num_mel_bins=arch.mel_bins,
        d_model=arch.d_model,
        encoder_layers=arch.encoder_layers,
        decoder_layers=arch.decoder_layers,
        encoder_attention_heads=arch.heads,
        decoder_attention_heads=arch.heads,
        encoder_ffn_dim=arch.ffn,
        decoder_ffn_dim=arch.ffn,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=SOT,
        pad_token_id=EOT,
        bos_token_id=EOT,
        eos_token_id=EOT,
    )
    return WhisperConfig(**(fields | overrides))


def resolve_model(name: str) -> str:
    """A local folder (must hold config.json) or a hub id, as a string for from_pretrained."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(
                f"{path} is not a model folder (no config.json): give a transformers Whisper "
                f"checkpoint folder or a hub id such as openai/whisper-large-v2"
            )
        check_base_config(path / "config.json")
        return str(path)
    if looks_local(name):
        raise UserError(
            f"model {name!r} not found: give an existing checkpoint folder or a hub id like openai/whisper-large-v2"
        )
    return name


WHISPER_SIZES = ("d_model", "encoder_layers", "decoder_layers", "encoder_ffn_dim", "decoder_ffn_dim", "num_mel_bins")


def check_base_config(path: Path) -> None:
    """A local base's config.json: a Whisper (model_type) with positive sizes, before
    transformers builds it (a negative size is a traceback deep inside torch)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}): give a transformers Whisper checkpoint folder") from None
    if not isinstance(config, dict) or config.get("model_type") != "whisper":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise UserError(f"{path.parent} holds a {kind!r} model, not a Whisper: give a Whisper checkpoint folder")
    bad = [
        f"{k} = {config[k]!r}"
        for k in WHISPER_SIZES
        if k in config and not (isinstance(config[k], int) and not isinstance(config[k], bool) and config[k] > 0)
    ]
    if bad:
        raise UserError(f"{path}: {', '.join(bad)}; every size of a Whisper must be a whole number above 0")


def pick_device(local_rank: int | None = None) -> torch.device:
    """The local GPU when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank or 0)
    return torch.device("cpu")


def cpu_has_amx() -> bool:
    """Whether this CPU multiplies bf16 on AMX tiles (torch's own probe)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def amp_dtype(device: torch.device, mixed_precision: str = "auto", training: bool = False) -> torch.dtype | None:
    """The autocast dtype: bf16 where the GPU supports it, fp16 otherwise. On the CPU, none,
    except for training on a CPU with AMX tiles (Sapphire Rapids and later), where a Whisper
    base step runs 1.8x faster in bf16 (0.89 -> 1.62 samples/s on 2 cores); elsewhere CPU
    autocast is slower than fp32, and CPU inference stays fp32 so that its scores compare
    with the fp32 runtimes (faster-whisper, whisper.cpp) clip for clip."""
    if mixed_precision == "no":
        return None
    if mixed_precision == "bf16":
        return torch.bfloat16
    if mixed_precision == "fp16":
        return torch.float16
    if device.type != "cuda":
        return torch.bfloat16 if training and cpu_has_amx() else None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def base_dtype(device: torch.device) -> torch.dtype:
    """The dtype of unquantized weights: half precision on GPUs, fp32 on the CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def input_dtype(model) -> torch.dtype:
    """The dtype the encoder's first convolution expects (fp32 under autocast too)."""
    return model.get_encoder().conv1.weight.dtype


def load_base(cfg: ModelConfig, device: torch.device):
    """The base Whisper model on ``device``, held as ``cfg.quantization`` says (no LoRA, no
    speed-ups yet: :func:`lora_model` and :func:`load_for_inference` add them)."""
    from transformers import WhisperForConditionalGeneration

    holding = get_holding(cfg.quantization).on(device)
    holding.check_available(device)
    name = resolve_model(cfg.base)
    dtype = base_dtype(device)
    try:
        model = WhisperForConditionalGeneration.from_pretrained(
            name,
            dtype=dtype,
            device_map={"": device},
            attn_implementation=cfg.attn_implementation,
            **holding.load_kwargs(cfg.int8_threshold, dtype),
        )
    except OSError as e:
        raise UserError(f"cannot load model {cfg.base!r}: {str(e).splitlines()[0]}") from None
    holding.after_load(model)
    return model


def load_processor(base: str):
    """The processor saved with the model, or, when the folder has none, the bundled offline
    build shaped as the model's config says: its mel bins, and 99 or 100 language tokens (the
    multilingual vocabulary is otherwise the same from v1 to v3)."""
    from transformers import WhisperProcessor

    folder = Path(base).expanduser()
    local_without = folder.is_dir() and not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json"))
    try:
        if local_without:
            raise OSError(f"no tokenizer in {folder}")
        has_processor = (folder / "tokenizer_config.json").is_file()  # an adapter folder holds one too
        return WhisperProcessor.from_pretrained(base if has_processor else resolve_model(base))
    except (OSError, ValueError, TypeError):
        n_mels, vocab = _config_shape(base)
        log.warning("no processor in %s: using the bundled offline Whisper processor (%d mel bins)", base, n_mels)
        return WhisperProcessor.from_pretrained(offline_processor_dir(n_mels, N_LANGUAGES_V2 + vocab - VOCAB_V2))


def _config_shape(base: str) -> tuple[int, int]:
    """(mel bins, vocabulary size) from a local model folder's config.json; v2's otherwise."""
    import json

    config = Path(base) / "config.json"
    if not config.is_file():
        return 80, VOCAB_V2
    data = json.loads(config.read_text(encoding="utf-8"))
    return int(data.get("num_mel_bins", 80)), int(data.get("vocab_size", VOCAB_V2))


def check_processor(config, processor, where: str) -> None:
    """Refuse, before any work, a processor that does not fit the model: the wrong number of
    mel bins (large-v3 and turbo take 128, earlier models 80) or a tokenizer of another
    generation (v3 has a 100th language token, so every later special token moves by one)."""
    bins, tokens = processor.feature_extractor.feature_size, len(processor.tokenizer)
    fix = "use the model's own processor, or make one: whisper-tune make-processor --n-mels N --num-languages L"
    if bins != config.num_mel_bins:
        raise UserError(
            f"the processor of {where} computes {bins} mel bins, the model takes {config.num_mel_bins}: {fix}"
        )
    if tokens != config.vocab_size:
        raise UserError(f"the tokenizer of {where} has {tokens} tokens, the model {config.vocab_size}: {fix}")


OWN_GENERATION_CONFIG = register(
    Patch(
        "own_generation_config",
        WRITTEN_FOR,
        lambda gc: hasattr(gc, "_from_model_config"),
        fallback="the saved generation config may lose Whisper's keys when loaded again",
    )
)


def set_generation_language(model, tokenizer, language: str, task: str, max_length: int = MAX_LABEL_TOKENS) -> None:
    """Write language/task and the token tables Whisper's generate needs into generation_config."""
    if language:
        require_language_token(tokenizer, language)
    gc = model.generation_config
    vocab = tokenizer.get_vocab()  # a fresh dict per call: fetch it once
    codes = [c for c in languages() if f"<|{c}|>" in vocab]
    gc.lang_to_id = {f"<|{c}|>": tokenizer.convert_tokens_to_ids(f"<|{c}|>") for c in codes}
    gc.task_to_id = {t: tokenizer.convert_tokens_to_ids(f"<|{t}|>") for t in ("transcribe", "translate")}
    gc.no_timestamps_token_id = tokenizer.convert_tokens_to_ids(CONTROL_TOKENS[-1])
    gc.decoder_start_token_id = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    gc.pad_token_id = gc.eos_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    gc.is_multilingual = True
    # A config "from the model config" drops every Whisper-specific key (lang_to_id...) when
    # it is loaded again: mark it as a generation config of its own.
    if usable(OWN_GENERATION_CONFIG, gc):
        gc._from_model_config = False
    gc.language, gc.task = language, task
    gc.forced_decoder_ids = None
    gc.max_length = max_length
    if getattr(gc, "begin_suppress_tokens", None) is None:
        gc.begin_suppress_tokens = [tokenizer.encode(" ", add_special_tokens=False)[0], gc.eos_token_id]
    model.config.forced_decoder_ids = None
    model.config.suppress_tokens = []


# transformers' warnings about its own Whisper generate, which a user of ours cannot act on:
# Whisper's generate passes a resolved generation config down with ``max_length`` set, so
# every call with ``max_new_tokens`` (all of ours) warned "Both `max_new_tokens` and
# `max_length` seem to have been set" (once per clip); the others come from the same inner
# call or from flags robust decoding needs (scores for the log-probability check).
UNACTIONABLE_WARNINGS = {
    "transformers.generation.utils": ("Both `max_new_tokens`", "Passing `generation_config` together with"),
    "transformers.generation.configuration_utils": ("The following generation flags are not valid",),
    "transformers.models.whisper.generation_whisper": ("You have passed `return_dict_in_generate=True`",),
}


class _Unactionable(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextlib.contextmanager
def quiet_generate():
    """Within the block, transformers' :data:`UNACTIONABLE_WARNINGS` are dropped (others pass)."""
    installed = [(logging.getLogger(name), _Unactionable(p)) for name, p in UNACTIONABLE_WARNINGS.items()]
    for logger, f in installed:
        logger.addFilter(f)
    try:
        yield
    finally:
        for logger, f in installed:
            logger.removeFilter(f)


def add_lora(model, lora: LoraSettings, cfg: ModelConfig):
    """Wrap ``model`` with trainable LoRA adapters; the base stays frozen, prepared as its
    holding says (bitsandbytes bases: PEFT's ``prepare_model_for_kbit_training``, as the
    recipe)."""
    from peft import LoraConfig, get_peft_model

    holding = get_holding(cfg.quantization)
    model = holding.prepare_for_lora(model)
    targets = lora.target_modules()
    if lora.freeze_encoder:
        names = "|".join(targets)
        targets = rf".*decoder\.layers\.\d+\.(self_attn|encoder_attn|)\.?({names})$"
    patterns = {}
    if lora.decoder_r is not None and lora.decoder_r != lora.r:
        # PEFT matches these keys against module names as r"(.*\.)?(KEY)$"
        decoder = r"decoder\..*"
        patterns = {
            "rank_pattern": {decoder: lora.decoder_r},
            "alpha_pattern": {decoder: lora.alpha * lora.decoder_r / lora.r},
        }
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, bias="none", **patterns
    )
    model = get_peft_model(model, config)
    if not holding.cast_adapter_inputs:
        # PEFT casts each adapter's input to the adapter's fp32 and autocast casts it back:
        # two copies of the activations per adapter. Autocast alone serves (and without
        # autocast the base is fp32 on the CPU, so the adapter's dtype already matches).
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    return model


def lora_model(cfg: ModelConfig, lora: LoraSettings, device: torch.device, compile: bool = False):
    """The model ``train`` trains and ``bench train`` times: the held base, LoRA, and the
    speed-ups for training (checkpointing, half-precision norms, lean attention, optionally
    per-layer compile)."""
    model = add_lora(load_base(cfg, device), lora, cfg)
    apply_speedups(model, cfg, train=True, compile=compile)
    if cfg.quantization == FP8 and not compile and device.type == "cuda" and fp8_unavailable(device) is None:
        # measured on large-v2 (H200, batch 8): 9.22 samples/s eager against int8-wo's 14.49
        # (benchmarks/results/round2-large-v2-h200/)
        log.warning(
            "model.quantization=fp8 without train.compile quantizes activations in separate passes, "
            "slower than int8-wo: set train.compile=true"
        )
    return model


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters, counting 4-bit packed weights at their real size."""
    trainable, total = model.get_nb_trainable_parameters()
    return int(trainable), int(total)


@dataclass
class InferenceModel:
    """A model ready to generate, and how it was put together."""

    model: object
    processor: object
    base: str
    adapter: str | None
    holding: Holding  # how the base is held: the training holding with exact=True, else unquantized
    merged: bool  # the adapter is merged into the weights (False: unmerged, or no adapter)
    language: str | None
    task: str
    autocast_dtype: torch.dtype | None = None  # generate under autocast (8-bit matmuls pick their dtype)

    def describe(self) -> str:
        """A label for printing and reports (never parsed: ask ``holding`` and ``merged``)."""
        if not self.adapter:
            return "base"
        if self.holding.quantized:
            return f"exact ({self.holding.name} base + adapter)"
        return "merged" if self.merged else "base + adapter (unmerged)"


def load_for_inference(
    base: str | None,
    adapter: str | None,
    device: torch.device,
    exact: bool = False,
    language: str | None = None,
    task: str | None = None,
    merge: bool = True,
) -> InferenceModel:
    """Base (+ adapter) for generation.

    The fast path merges the adapter into a half-precision copy of the base (fp32 on the
    CPU): merged generation costs what the plain model costs. ``exact=True`` keeps the
    base held as the adapter was trained on it, with the adapter unmerged, for a figure
    faithful to training (8-bit weights cannot take a merge). ``merge=False`` keeps the
    adapter unmerged on the half-precision base, so that ``model.disable_adapter()`` gives
    the base model without a second copy of the weights. ``language="auto"`` leaves the
    language to Whisper's detection instead of the adapter's.
    """
    from peft import PeftModel

    if adapter:
        check_adapter(adapter, base)  # one line listing every problem, before PEFT or torch reads it
    meta = AdapterMeta.read(adapter) if adapter else AdapterMeta(base=None)
    base = base or meta.resolve_base(adapter)
    if not base:
        raise UserError("no base model: pass --model (the adapter folder does not name its base)")
    cfg = ModelConfig(
        base=base,
        quantization=meta.quantization if exact else NONE,
        int8_threshold=meta.int8_threshold,
        gradient_checkpointing=False,
    )
    holding = get_holding(cfg.quantization).on(device, quiet=True)  # what runs: load_base warns of a fallback
    model = load_base(cfg, device)
    merged = False
    if adapter:
        model = PeftModel.from_pretrained(model, adapter)
        if merge and not holding.quantized:
            model, merged = model.merge_and_unload(), True
    apply_speedups(model, cfg, train=False)
    model.eval()
    processor = load_processor(adapter if adapter and (Path(adapter) / "tokenizer_config.json").exists() else base)
    check_processor(model.config, processor, adapter or base)
    language = None if language == "auto" else language or meta.language
    task = task or meta.task or "transcribe"
    if language:
        from .processor import resolve_language

        language = resolve_language(language)
    set_generation_language(model, processor.tokenizer, language, task)
    amp = amp_dtype(device) if holding.eval_autocast else None
    return InferenceModel(model, processor, base, adapter, holding, merged, language, task, amp)
