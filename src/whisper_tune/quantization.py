"""How the frozen base is held in memory while LoRA trains on it: one :class:`Holding` per
value of ``model.quantization``, each saying how to load, how to prepare for LoRA, which
checkpointing it needs, whether an adapter merges into it and how it evaluates.

The rest of the package asks the entry instead of testing the name, so a new holding (fp8,
int4 weight-only) is one entry here, not an edit in every stage. The names users write are
the keys of :data:`HOLDINGS` (``config.QUANTIZATIONS`` lists the same names for validation
before torch loads; a test holds the two equal).

* ``int8-wo`` (the default): int8 weights with one scale per output row, dequantized to the
  compute dtype inside each Linear. 8-bit memory, but the matmul runs in bf16/fp16 on tensor
  cores: what makes the reference recipe slow is LLM.int8's outlier-splitting matmul, not
  the 8 bits.
* ``fp8``: E4M3 weights with one scale per output row, computed in 8 bits: each frozen
  Linear quantizes its input (and, in backward, its output gradient) row by row and runs
  ``torch._scaled_mm`` on the fp8 tensor cores (compute capability 8.9+: Ada, Hopper). Where
  there are none it falls back to ``int8-wo`` with one warning; see :class:`Fp8Linear`.
  It is not faster than bf16 yet. Measured on large-v2 (H200, random weights, batch 32,
  every layer recomputed, compiled), fp8 does 39.52 samples/s against bf16's 41.30 in the
  same call; eager at batch 8, 9.22 against 19.55 (``benchmarks/results/round2-large-v2-h200/``).
  The fp8 matmuls alone are 1.7x bf16, but quantizing their inputs row by row runs near
  1 TB/s and eats the gain (``benchmarks/fp8_gemm_modes.py``). Its WER is within 1 point
  of bf16's on the mean of four seeds of the GPU demo (``benchmarks/results/holdings-base-h200/``).
* ``int8``: bitsandbytes LLM.int8, the reference recipe's numerics.
* ``nf4``: bitsandbytes 4-bit NormalFloat with double quantization.
* ``none``: half precision on GPUs (bf16 where supported), fp32 on the CPU.

bitsandbytes serves int8 and nf4 on CUDA and, since 0.46, on the CPU, which the tests use.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from .errors import UserError

log = logging.getLogger(__name__)


class Int8WeightOnlyLinear(torch.nn.Linear):
    """A frozen Linear held as int8 weights with one scale per output row, dequantized to the
    compute dtype inside ``forward``. It subclasses ``nn.Linear`` so PEFT wraps it with LoRA
    like any Linear."""

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


E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
# Hopper's fast accumulation skips the periodic promotion of the fp8 tensor cores' partial sums:
# faster, slightly less exact; torchao's float8 training uses it for the forward output only
FAST_ACCUM_FORWARD, FAST_ACCUM_BACKWARD = True, False
FP8_ALIGN = 16  # _scaled_mm wants both dimensions of each weight to be multiples of 16
# The CPU has no fp8 matmuls: torch emulates them (right numerics, slower than int8-wo), so a
# CPU run falls back unless this is "1" (the tests and the CPU accuracy checks of fp8 set it).
FP8_ON_CPU_ENV = "WHISPER_TUNE_FP8_ON_CPU"


class Fp8Linear(torch.nn.Linear):
    """A frozen Linear held as E4M3 weights with one fp32 scale per output row, quantized
    once at load; its forward and input-gradient matmuls run on the fp8 tensor cores.

    Like :class:`Int8WeightOnlyLinear` it subclasses ``nn.Linear`` so PEFT wraps it with
    LoRA (which stays in bf16/fp32 beside it). The activations and output gradients are
    quantized per row with dynamic scales, a row-local reduction that ``torch.compile``
    fuses into the kernel that produced the tensor (a layer norm, a GELU, an attention
    reshape); eager runs use one compiled quantize kernel per tensor on CUDA instead.
    """

    def __init__(self, linear: torch.nn.Linear):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / E4M3_MAX  # per output row
        self.weight = torch.nn.Parameter((weight / scale[:, None]).to(E4M3), requires_grad=False)
        self.register_buffer("weight_scale", scale)  # fp32: _scaled_mm takes fp32 scales
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
        # PEFT casts new adapters to the base layer's weight dtype unless it names one here
        self.compute_dtype = linear.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        return _Fp8Matmul.apply(x, self.weight, self.weight_scale, bias, dtype)


class _Fp8Matmul(torch.autograd.Function):
    """``x @ W.T`` with ``W = diag(s_w) Wq`` on fp8 tensor cores, forward and input gradient.

    The input gradient is ``grad @ W = (grad * s_w) @ Wq``: folding the per-row weight scale
    into the output gradient before quantizing it lets the same fp8 weight serve both
    matmuls (transposed to the column-major layout _scaled_mm wants, a one-byte copy), so
    only fp8 tensors and fp32 scales are saved for backward, never a 16-bit weight.
    """

    @staticmethod
    def forward(ctx, x, qweight, scale, bias, dtype):
        ctx.save_for_backward(qweight, scale)
        ctx.dtype = dtype
        rows = x.reshape(-1, x.shape[-1])
        qx, sx = _quantize_rows(rows)
        out = _fp8_mm(qx, qweight.t(), sx, scale[None, :], dtype, bias, FAST_ACCUM_FORWARD)
        return out.reshape(*x.shape[:-1], qweight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        qweight, scale = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        qg, sg = _quantize_rows(rows, scale)
        ones = torch.ones(1, qweight.shape[1], device=qweight.device, dtype=torch.float32)
        grad_x = _fp8_mm(qg, qweight.t().contiguous().t(), sg, ones, ctx.dtype, None, FAST_ACCUM_BACKWARD)
        return grad_x.reshape(*grad.shape[:-1], qweight.shape[1]), None, None, None, None


def _quantize_rows_eager(t: torch.Tensor, col_scale: torch.Tensor | None = None):
    """(E4M3 rows, fp32 scale per row) of ``t`` (times ``col_scale`` per column, if given):
    each row's largest magnitude maps to E4M3's largest value."""
    t = t.float() if col_scale is None else t.float() * col_scale
    scale = t.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
    return (t / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


_quantize_rows_fused = None


def _quantize_rows(t: torch.Tensor, col_scale: torch.Tensor | None = None):
    """:func:`_quantize_rows_eager`, as one kernel: inside a compiled layer Inductor fuses it
    with its neighbours (the layer norm, GELU or GELU backward that produced ``t``); eager on
    CUDA it is compiled on its own, one kernel instead of five."""
    global _quantize_rows_fused
    if not t.is_cuda or torch.compiler.is_compiling():
        return _quantize_rows_eager(t, col_scale)
    if _quantize_rows_fused is None:
        _quantize_rows_fused = torch.compile(_quantize_rows_eager, dynamic=True)
    return _quantize_rows_fused(t, col_scale)


def _fp8_mm(a, b, scale_a, scale_b, dtype, bias, fast_accum):
    """``a @ b`` scaled, plus ``bias``, in ``dtype``. CUDA's row-wise kernels return only
    bf16 and add a bf16 bias in their epilogue (a separate add would cost one more pass
    over the output in eager runs)."""
    out_dtype = dtype if a.device.type == "cpu" else torch.bfloat16
    fused = bias is not None and bias.dtype == out_dtype
    out = torch._scaled_mm(
        a,
        b,
        scale_a=scale_a,
        scale_b=scale_b,
        bias=bias if fused else None,
        out_dtype=out_dtype,
        use_fast_accum=fast_accum,
    ).to(dtype)
    return out if bias is None or fused else out + bias


def fp8_unavailable(device: torch.device) -> str | None:
    """Why ``device`` cannot run fp8 matmuls, or None where it can."""
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability < (8, 9):
            name = torch.cuda.get_device_name(device)
            return f"{name} (compute capability {capability[0]}.{capability[1]}) has no fp8 tensor cores (8.9+)"
        return None
    if device.type == "cpu":
        if os.environ.get(FP8_ON_CPU_ENV) == "1":
            return None
        return "the CPU has no fp8 matmuls (torch would emulate them, slower than int8-wo)"
    return f"{device.type} has no fp8 matmuls in torch"


def quantize_linears(model, make=Int8WeightOnlyLinear) -> None:
    """Replace every Linear of the encoder and decoder layers by ``make(linear)`` (the output
    projection stays: it shares its weight with the token embeddings). Fp8 layers need
    dimensions that are multiples of 16 (every Whisper size has them); any other Linear is
    held as int8-wo."""
    for layers in (model.model.encoder.layers, model.model.decoder.layers):
        for parent in layers.modules():
            for name, child in list(parent.named_children()):
                if type(child) is torch.nn.Linear:
                    aligned = child.in_features % FP8_ALIGN == 0 and child.out_features % FP8_ALIGN == 0
                    setattr(parent, name, make(child) if aligned else Int8WeightOnlyLinear(child))


def _freeze(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _kbit_prepare(model):
    """The recipe's preparation of a bitsandbytes base: fp32 norms, frozen weights, input
    gradients on (checkpointing is set separately, per layer)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


@dataclass(frozen=True)
class Holding:
    """One way of holding the frozen base; every stage asks it rather than the name."""

    name: str
    summary: str  # one line for help texts and reports
    bitsandbytes: str | None = None  # "8bit" | "4bit": loaded through a BitsAndBytesConfig
    weight_only_int8: bool = False  # swap Linear layers for Int8WeightOnlyLinear after loading
    fp8: bool = False  # swap Linear layers for Fp8Linear after loading (int8-wo where no fp8)
    # bitsandbytes keeps its matmul inputs on the autograd context, outside the saved tensors
    # that non-reentrant checkpointing frees: only the reentrant kind saves memory there
    reentrant_checkpointing: bool = False
    # keep PEFT's cast of each adapter's input to fp32 (bitsandbytes layers want it; for the
    # others autocast alone serves, and the cast costs two copies of the activations)
    cast_adapter_inputs: bool = False
    # half-precision norms that stay half under autocast (see speedups.HalfLayerNorm);
    # bitsandbytes bases keep the recipe's fp32 norms
    half_norms: bool = True

    @property
    def quantized(self) -> bool:
        """Whether the weights are not plain floating point, so that an adapter cannot be
        merged into them: ``--exact`` inference keeps such a base with the adapter unmerged."""
        return self.bitsandbytes is not None or self.weight_only_int8 or self.fp8

    @property
    def eval_autocast(self) -> bool:
        """8-bit and 4-bit matmuls want autocast to pick their compute dtype when generating."""
        return self.quantized

    def check_available(self, device: torch.device) -> None:
        """Fail early, with the fix, where this holding cannot run."""
        if self.bitsandbytes is None:
            return
        try:
            import bitsandbytes  # noqa: F401
        except Exception as e:  # ImportError, or a missing native library
            raise UserError(
                f"quantization {self.name} needs bitsandbytes, which cannot load here ({e}): "
                f"pip install bitsandbytes, or set model.quantization=none"
            ) from None
        if device.type not in ("cuda", "cpu"):
            raise UserError(f"bitsandbytes {self.name} does not run on {device.type}: set model.quantization=none")

    def on(self, device: torch.device, quiet: bool = False) -> Holding:
        """The holding that runs on ``device``: fp8 falls back to int8-wo, with a warning
        saying why (``quiet``: the caller that loads the base gives it), where the device has
        no fp8 matmuls (both keep 8-bit weights, neither merges, every other field agrees)."""
        if self.fp8 and (why := fp8_unavailable(device)):
            if not quiet:
                log.warning("model.quantization=%s runs as %s: %s", self.name, INT8_WO, why)
            return HOLDINGS[INT8_WO]
        return self

    def load_kwargs(self, int8_threshold: float, compute_dtype: torch.dtype) -> dict:
        """Extra ``from_pretrained`` arguments: the BitsAndBytesConfig, when there is one."""
        if self.bitsandbytes is None:
            return {}
        from transformers import BitsAndBytesConfig

        if self.bitsandbytes == "8bit":
            return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=int8_threshold)}
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
        return {"quantization_config": config}

    def after_load(self, model) -> None:
        """What happens to the loaded base before anything else sees it."""
        if self.weight_only_int8:
            quantize_linears(model, Int8WeightOnlyLinear)
        elif self.fp8:
            quantize_linears(model, Fp8Linear)

    def prepare_for_lora(self, model):
        """The frozen base, ready for adapters (bitsandbytes bases: the recipe's preparation)."""
        return _kbit_prepare(model) if self.bitsandbytes else _freeze(model)


INT8_WO, FP8, INT8, NF4, NONE = "int8-wo", "fp8", "int8", "nf4", "none"
HOLDINGS: dict[str, Holding] = {
    h.name: h
    for h in (
        Holding(
            INT8_WO,
            "int8 weights, one scale per row, bf16 matmuls: 8-bit memory at bf16 speed",
            weight_only_int8=True,
        ),
        Holding(
            FP8,
            "E4M3 weights, one scale per row, fp8 matmuls forward and backward (int8-wo without fp8 cores)",
            fp8=True,
        ),
        Holding(
            INT8,
            "bitsandbytes LLM.int8: the reference recipe's numerics, 2-5x slower on a GPU",
            bitsandbytes="8bit",
            reentrant_checkpointing=True,
            cast_adapter_inputs=True,
            half_norms=False,
        ),
        Holding(
            NF4,
            "bitsandbytes 4-bit NormalFloat, double quantization: the least memory",
            bitsandbytes="4bit",
            reentrant_checkpointing=True,
            cast_adapter_inputs=True,
            half_norms=False,
        ),
        Holding(NONE, "unquantized: bf16/fp16 on GPUs, fp32 on the CPU"),
    )
}
DEFAULT = INT8_WO


def get_holding(name: str) -> Holding:
    """The entry for a ``model.quantization`` value."""
    try:
        return HOLDINGS[name]
    except KeyError:
        raise UserError(f"unknown quantization {name!r}: choose one of {', '.join(HOLDINGS)}") from None
