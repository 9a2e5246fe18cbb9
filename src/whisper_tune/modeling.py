"""Model loading: the base checkpoint (quantized or not), its processor and generation
settings, and the LoRA adapters.

``quantization`` is one value: ``int8`` (bitsandbytes LLM.int8, the reference recipe),
``nf4`` (4-bit NormalFloat with double quantization) or ``none`` (bf16 on GPUs that have
it, fp16 on older GPUs, fp32 on the CPU). bitsandbytes serves int8 and nf4 on CUDA and,
since 0.46, on the CPU, which is what the tests use.

Language and task go into ``generation_config`` (``language``/``task`` plus the lookup
tables Whisper's ``generate`` needs), never into ``forced_decoder_ids``, which
transformers 5 deprecates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import LoraSettings, ModelConfig
from .errors import UserError
from .processor import BUNDLED, CONTROL_TOKENS, MAX_LABEL_TOKENS, languages, processor_path

log = logging.getLogger(__name__)


ARCHITECTURES = {  # d_model, layers (encoder = decoder), attention heads, ffn width
    "tiny-test": (64, 2, 2, 128),  # for tests: seconds on a CPU
    "base": (512, 6, 8, 2048),  # 74 M parameters
    "small": (768, 12, 12, 3072),  # 244 M
    "large-v2": (1280, 32, 20, 5120),  # 1.55 B, the reference recipe's model
}


def architecture_config(name: str):
    """A multilingual WhisperConfig of a named size (random weights for tests and benchmarks:
    speed and memory do not depend on the values)."""
    from transformers import WhisperConfig

    d_model, layers, heads, ffn = ARCHITECTURES[name]
    return WhisperConfig(
        vocab_size=51865,
        num_mel_bins=80,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=50258,
        pad_token_id=50257,
        bos_token_id=50257,
        eos_token_id=50257,
    )


def resolve_model(name: str) -> str:
    """A local folder (must hold config.json) or a hub id, as a string for from_pretrained."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(
                f"{path} is not a model folder (no config.json): give a transformers Whisper "
                f"checkpoint folder or a hub id such as openai/whisper-large-v2"
            )
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise UserError(
            f"model {name!r} not found: give an existing checkpoint folder or a hub id like openai/whisper-large-v2"
        )
    return name


def pick_device(local_rank: int | None = None) -> torch.device:
    """The local GPU when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank or 0)
    return torch.device("cpu")


def amp_dtype(device: torch.device, mixed_precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype: bf16 where the GPU supports it, fp16 otherwise, none on the CPU."""
    if mixed_precision == "no":
        return None
    if mixed_precision == "bf16":
        return torch.bfloat16
    if mixed_precision == "fp16":
        return torch.float16
    if device.type != "cuda":
        return None  # CPU autocast is slower than fp32 on most CPUs without AMX
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def require_bitsandbytes(quantization: str, device: torch.device) -> None:
    """Fail early, with the fix, where bitsandbytes cannot serve the asked quantization."""
    if quantization not in ("int8", "nf4"):
        return
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # ImportError, or a missing native library
        raise UserError(
            f"quantization {quantization} needs bitsandbytes, which cannot load here ({e}): "
            f"pip install bitsandbytes, or set model.quantization=none"
        ) from None
    if device.type not in ("cuda", "cpu"):
        raise UserError(f"bitsandbytes {quantization} does not run on {device.type}: set model.quantization=none")


def quantization_config(quantization: str, int8_threshold: float, compute_dtype: torch.dtype):
    """The BitsAndBytesConfig for a quantization name (None for ``none``)."""
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=int8_threshold)
    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    return None


def base_dtype(device: torch.device) -> torch.dtype:
    """The dtype of unquantized weights: half precision on GPUs, fp32 on the CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_base(cfg: ModelConfig, device: torch.device):
    """The base Whisper model on ``device``, held as ``cfg.quantization`` says."""
    from transformers import WhisperForConditionalGeneration

    require_bitsandbytes(cfg.quantization, device)
    name = resolve_model(cfg.base)
    dtype = base_dtype(device)
    bnb = cfg.quantization in ("int8", "nf4")
    try:
        model = WhisperForConditionalGeneration.from_pretrained(
            name,
            quantization_config=quantization_config(cfg.quantization, cfg.int8_threshold, dtype) if bnb else None,
            dtype=dtype,
            device_map={"": device},
            attn_implementation=cfg.attn_implementation,
        )
    except OSError as e:
        raise UserError(f"cannot load model {cfg.base!r}: {str(e).splitlines()[0]}") from None
    if cfg.quantization == "int8-wo":
        quantize_weight_only(model)
    if cfg.attn_implementation == "sdpa":
        use_lean_attention(model)
    return model


class Int8WeightOnlyLinear(torch.nn.Linear):
    """A frozen Linear held as int8 weights with one scale per output row, dequantized to the
    compute dtype inside ``forward``.

    8-bit memory for the base, but the matmul runs in bf16/fp16 on tensor cores: what makes
    the reference recipe slow is LLM.int8's outlier-splitting matmul, not the 8 bits. It
    subclasses ``nn.Linear`` so PEFT wraps it with LoRA like any Linear.
    """

    def __init__(self, linear: torch.nn.Linear):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # symmetric, per output row
        quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.weight = torch.nn.Parameter(quantized, requires_grad=False)
        self.register_buffer("weight_scale", scale.to(linear.weight.dtype))
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        return _Int8WeightOnlyMatmul.apply(x.to(dtype), self.weight, self.weight_scale, bias)


class _Int8WeightOnlyMatmul(torch.autograd.Function):
    """``x @ dequantize(W).T + b`` that keeps only the int8 weight for the backward pass.

    Plain autograd would save each layer's dequantized half-precision weight until the
    backward pass: a second, 16-bit copy of the whole base (3 GB for large-v2) held for the
    length of every step. Dequantizing again in backward costs a few milliseconds.
    """

    @staticmethod
    def forward(ctx, x, qweight, scale, bias):
        ctx.save_for_backward(qweight, scale)
        return torch.nn.functional.linear(x, _dequantize(qweight, scale, x.dtype), bias)

    @staticmethod
    def backward(ctx, grad):
        qweight, scale = ctx.saved_tensors
        grad_x = grad @ _dequantize(qweight, scale, grad.dtype) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None


def _dequantize(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return qweight.to(dtype) * scale.to(dtype)[:, None]


def quantize_weight_only(model) -> None:
    """Replace every Linear of the encoder and decoder layers by an Int8WeightOnlyLinear
    (the output projection stays: it shares its weight with the token embeddings)."""
    for layers in (model.model.encoder.layers, model.model.decoder.layers):
        for parent in layers.modules():
            for name, child in list(parent.named_children()):
                if type(child) is torch.nn.Linear:
                    setattr(parent, name, Int8WeightOnlyLinear(child))


class HalfLayerNorm(torch.nn.LayerNorm):
    """A LayerNorm that returns its weights' half dtype even under autocast.

    Autocast runs every layer norm in fp32 and returns fp32, so each q/k/v/fc1 input is cast
    back to bf16 separately and each cast copy is kept for the backward pass: on large-v2
    those copies were the biggest single item of GPU time (28 %) and a good share of the
    activation memory. The CUDA kernel still accumulates the statistics in fp32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return torch.nn.functional.layer_norm(
                x.to(self.weight.dtype), self.normalized_shape, self.weight, self.bias, self.eps
            )


def use_half_norms(model) -> int:
    """Swap every half-precision LayerNorm of ``model`` for a HalfLayerNorm (bitsandbytes
    bases keep the recipe's fp32 norms); returns how many were swapped."""
    swapped = 0
    for module in model.modules():
        if type(module) is torch.nn.LayerNorm and module.weight.dtype in (torch.bfloat16, torch.float16):
            module.__class__ = HalfLayerNorm
            swapped += 1
    return swapped


def use_lean_attention(model) -> int:
    """Give the encoder's self-attention and the decoder's cross-attention a forward without
    transformers' copies; returns the attention modules changed.

    transformers makes q, k, v and the output contiguous around the attention call and scales
    q in a separate op: up to five copies of a (batch, 1500, d_model) tensor per layer and
    pass, which SDPA does not need (it reads strided heads and takes the scale). Neither
    attention has a mask; calls that bring a key/value cache (generation) keep
    transformers' own forward.
    """
    import types

    changed = []
    changed += [layer.self_attn for layer in model.model.encoder.layers]
    changed += [layer.encoder_attn for layer in model.model.decoder.layers]
    for attn in changed:
        attn.forward = types.MethodType(_lean_attention_forward, attn)
    return len(changed)


def _lean_attention_forward(self, hidden_states, key_value_states=None, attention_mask=None, **kwargs):
    if any(kwargs.get(name) is not None for name in ("cache", "past_key_values", "past_key_value")):
        return type(self).forward(
            self, hidden_states, key_value_states=key_value_states, attention_mask=attention_mask, **kwargs
        )
    source = hidden_states if key_value_states is None else key_value_states
    batch, length, _ = hidden_states.shape
    q = self.q_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
    k = self.k_proj(source).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
    v = self.v_proj(source).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
    dropout = self.dropout if self.training else 0.0
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=self.scaling)
    return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1)), None


def compile_layers(model) -> int:
    """``torch.compile`` each encoder and decoder layer (LoRA included); returns how many.

    Fusing the norms, activations, dropout and residual adds of a layer cut 15-20 % of a
    large-v2 step on an H100 after a one-off compile of about a minute. Layer by layer, not
    the whole model, so the rest (the loss, generation during evaluation) stays eager.
    Compile errors fall back to eager code.
    """
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = [*inner.model.encoder.layers, *inner.model.decoder.layers]
    for layer in layers:
        layer.compile()
    return len(layers)


def set_checkpointing(model, share: bool | float, reentrant: bool = False) -> None:
    """Recompute activations in the first ``share`` of the encoder's and the decoder's layers
    (True = all, False = none): less memory for about a third more compute per recomputed
    layer, so a share lets a batch just fit instead of paying for every layer.

    ``reentrant`` is for bitsandbytes bases: LLM.int8's matmul keeps its input on the autograd
    context, outside the saved tensors that non-reentrant checkpointing frees, so only the
    reentrant kind (the recipe's) saves memory there: 5.4 instead of 28.7 GiB on large-v2.
    Reentrant checkpointing needs the layer inputs to require grad, hence the two hooks.
    """
    share = float(share)
    if share <= 0:
        return
    if reentrant:
        model.enable_input_require_grads()  # the decoder's token embeddings
        model.model.encoder.conv1.register_forward_hook(_output_requires_grad)  # the encoder's input, as the recipe
    # renamed activation_checkpointing_enable in transformers 5.24
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": reentrant})  # the checkpoint() keyword arguments, first in both names
    for layers in (model.model.encoder.layers, model.model.decoder.layers):
        keep = round(share * len(layers))
        for i, layer in enumerate(layers):
            layer.gradient_checkpointing = i < keep


def _output_requires_grad(module, inputs, output):
    output.requires_grad_(True)


def load_processor(base: str):
    """The processor saved with the model, or the bundled offline build when the folder has
    none (the multilingual vocabulary is the same for every v1/v2 checkpoint)."""
    from transformers import WhisperProcessor

    try:
        has_processor = (Path(base) / "tokenizer_config.json").is_file()  # an adapter folder holds one too
        return WhisperProcessor.from_pretrained(base if has_processor else resolve_model(base))
    except (OSError, ValueError, TypeError):
        log.warning("no processor in %s: using the bundled offline Whisper processor", base)
        return WhisperProcessor.from_pretrained(processor_path(BUNDLED))


def set_generation_language(model, tokenizer, language: str, task: str, max_length: int = MAX_LABEL_TOKENS) -> None:
    """Write language/task and the token tables Whisper's generate needs into generation_config."""
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
    gc._from_model_config = False
    gc.language, gc.task = language, task
    gc.forced_decoder_ids = None
    gc.max_length = max_length
    if getattr(gc, "begin_suppress_tokens", None) is None:
        gc.begin_suppress_tokens = [tokenizer.encode(" ", add_special_tokens=False)[0], gc.eos_token_id]
    model.config.forced_decoder_ids = None
    model.config.suppress_tokens = []


def add_lora(model, lora: LoraSettings, cfg: ModelConfig):
    """Wrap ``model`` with trainable LoRA adapters; the base stays frozen.

    Quantized bases go through PEFT's ``prepare_model_for_kbit_training`` as in the
    recipe (layer norms in fp32, input gradients on, checkpointing).
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.quantization in ("int8", "nf4"):  # bitsandbytes layers: the recipe's preparation
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        use_half_norms(model)
    set_checkpointing(model, cfg.gradient_checkpointing, reentrant=cfg.quantization in ("int8", "nf4"))
    targets = lora.target_modules()
    if lora.freeze_encoder:
        names = "|".join(targets)
        targets = rf".*decoder\.layers\.\d+\.(self_attn|encoder_attn|)\.?({names})$"
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, bias="none")
    model = get_peft_model(model, config)
    if cfg.quantization not in ("int8", "nf4"):
        # PEFT casts each adapter's input to the adapter's fp32 and autocast casts it back:
        # two copies of the activations per adapter. Autocast alone serves (and without
        # autocast the base is fp32 on the CPU, so the adapter's dtype already matches).
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    return model


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters, counting 4-bit packed weights at their real size."""
    trainable, total = model.get_nb_trainable_parameters()
    return int(trainable), int(total)


ADAPTER_META = "whisper_tune.json"  # written beside adapter_config.json: what evaluate/merge need


def write_adapter_meta(folder: Path, cfg: ModelConfig, language: str, task: str) -> None:
    """Record base, quantization and language next to an adapter, so later commands need
    only the adapter folder."""
    import json

    meta = {
        "base": cfg.base,
        "quantization": cfg.quantization,
        "int8_threshold": cfg.int8_threshold,
        "language": language,
        "task": task,
    }
    (Path(folder) / ADAPTER_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def read_adapter_meta(folder: str | Path) -> dict:
    """The adapter's whisper-tune record, or what PEFT's adapter_config.json says of its base."""
    import json

    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise UserError(
            f"{folder} is not a LoRA adapter folder (no adapter_config.json): give a run's adapter/ or best/ folder"
        )
    if (folder / ADAPTER_META).is_file():
        return json.loads((folder / ADAPTER_META).read_text(encoding="utf-8"))
    peft_config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    return {"base": peft_config.get("base_model_name_or_path"), "quantization": "none"}


@dataclass
class InferenceModel:
    """A model ready to generate, and how it was put together."""

    model: object
    processor: object
    base: str
    adapter: str | None
    mode: str  # "base", "merged" or "exact (int8 base + adapter)"
    language: str | None
    task: str


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
    quantized base the adapter was trained on, with the adapter unmerged, for a figure
    faithful to training (8-bit weights cannot take a merge). ``merge=False`` keeps the
    adapter unmerged on the half-precision base, so that ``model.disable_adapter()`` gives
    the base model without a second copy of the weights. ``language="auto"`` leaves the
    language to Whisper's detection instead of the adapter's.
    """
    from peft import PeftModel

    meta = read_adapter_meta(adapter) if adapter else {}
    base = base or meta.get("base")
    if not base:
        raise UserError("no base model: pass --model (the adapter folder does not name its base)")
    quantization = meta.get("quantization", "none") if exact else "none"
    cfg = ModelConfig(
        base=base,
        quantization=quantization,
        int8_threshold=meta.get("int8_threshold", 6.0),
        gradient_checkpointing=False,
    )
    model = load_base(cfg, device)
    mode = "base"
    if adapter:
        model = PeftModel.from_pretrained(model, adapter)
        if quantization != "none":
            mode = f"exact ({quantization} base + adapter)"
        elif merge:
            model = model.merge_and_unload()
            mode = "merged"
        else:
            mode = "base + adapter (unmerged)"
    model.eval()
    processor = load_processor(adapter if adapter and (Path(adapter) / "tokenizer_config.json").exists() else base)
    language = None if language == "auto" else language or meta.get("language")
    task = task or meta.get("task") or "transcribe"
    if language:
        from .processor import resolve_language

        language = resolve_language(language)
    set_generation_language(model, processor.tokenizer, language, task)
    return InferenceModel(model, processor, base, adapter, mode, language, task)
