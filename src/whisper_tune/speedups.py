"""What makes a step fast: the patches whisper-tune applies to transformers' Whisper, all
behind :func:`apply_speedups`.

Each patch names the transformers version it was written and measured against
(:attr:`Patch.written_for`) and checks, before it touches the model, that the internals it
relies on are still there. A transformers release with another major version, or without
those internals, gets transformers' own code and one warning instead of a silent wrong
patch. Nothing here sets a process-wide flag: compiled layers run with torch's
``suppress_errors`` scoped to their own calls.

The measured effect of each (H100, large-v2; benchmarks/results/history/):

* half-precision norms: autocast ran layer norms in fp32 and q/k/v/fc1 cast back, 28 % of
  GPU time in copies before;
* lean attention: up to five copies of a (batch, 1500, d_model) tensor per layer and pass;
* per-layer compile: 15-20 % of a step after a one-off compile of about a minute;
* checkpointing a share of layers: less memory for about a third more compute per layer.
"""

from __future__ import annotations

import functools
import logging
import types
from collections.abc import Callable

import torch

from .config import AUTO, ModelConfig
from .patches import WRITTEN_FOR, Patch, register, usable
from .quantization import Holding, get_holding

log = logging.getLogger(__name__)

# ---- half-precision layer norms ------------------------------------------------------


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
    """Swap every half-precision LayerNorm of ``model`` for a HalfLayerNorm (fp32 norms, as
    on the CPU or on bitsandbytes bases, are left alone); returns how many were swapped."""
    swapped = 0
    for module in model.modules():
        if type(module) is torch.nn.LayerNorm and module.weight.dtype in (torch.bfloat16, torch.float16):
            module.__class__ = HalfLayerNorm
            swapped += 1
    return swapped


# ---- lean attention ------------------------------------------------------------------


def _lean_attention_modules(model) -> list:
    return [layer.self_attn for layer in model.model.encoder.layers] + [
        layer.encoder_attn for layer in model.model.decoder.layers
    ]


def _has_attention_internals(model) -> bool:
    needed = ("q_proj", "k_proj", "v_proj", "out_proj", "num_heads", "head_dim", "scaling", "dropout")
    return all(hasattr(attn, name) for attn in _lean_attention_modules(model) for name in needed)


def use_lean_attention(model) -> int:
    """Give the encoder's self-attention and the decoder's cross-attention a forward without
    transformers' copies; returns the attention modules changed.

    transformers makes q, k, v and the output contiguous around the attention call and scales
    q in a separate op: up to five copies of a (batch, 1500, d_model) tensor per layer and
    pass, which SDPA does not need (it reads strided heads and takes the scale). Neither
    attention has a mask; calls that bring a key/value cache (generation) keep
    transformers' own forward.
    """
    changed = _lean_attention_modules(model)
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


# ---- per-layer compile ---------------------------------------------------------------


def _layers(model) -> list:
    return [*model.model.encoder.layers, *model.model.decoder.layers]


def compile_layers(model) -> int:
    """``torch.compile`` each encoder and decoder layer (LoRA included); returns how many.

    Layer by layer, not the whole model, so the rest (the loss, generation during
    evaluation) stays eager. A layer that fails to compile runs eagerly: torch's
    ``suppress_errors`` is switched on around that layer's calls only.
    """
    layers = _layers(model)
    for layer in layers:
        layer.compile()
        layer._compiled_call_impl = _suppressing_errors(layer._compiled_call_impl)
    return len(layers)


def _suppressing_errors(call: Callable) -> Callable:
    import torch._dynamo

    @functools.wraps(call)
    def run(*args, **kwargs):
        with torch._dynamo.config.patch(suppress_errors=True):
            return call(*args, **kwargs)

    return run


def _has_compile_hook(model) -> bool:
    layer = _layers(model)[0]
    return hasattr(layer, "compile") and hasattr(layer, "_compiled_call_impl")


# ---- checkpointing -------------------------------------------------------------------


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
    checkpoint_share(model, share)


def checkpoint_share(model, share: float) -> None:
    """Recompute the first ``share`` of the encoder's and of the decoder's layers, and keep the
    activations of the rest: the per-layer flag transformers' layers read on every call, so
    the share can change between steps (``fit`` tries several on one model). Layers recompute
    only once :func:`set_checkpointing` has installed the checkpoint function."""
    for layers in (model.model.encoder.layers, model.model.decoder.layers):
        keep = round(float(share) * len(layers))
        for i, layer in enumerate(layers):
            layer.gradient_checkpointing = i < keep


def _output_requires_grad(module, inputs, output):
    output.requires_grad_(True)


def _has_layer_checkpointing(model) -> bool:
    return all(hasattr(layer, "gradient_checkpointing") for layer in _layers(model))


# ---- the table -----------------------------------------------------------------------


PATCHES = {
    p.name: register(p)
    for p in (
        Patch("half_norms", WRITTEN_FOR, lambda m: True),
        Patch("lean_attention", WRITTEN_FOR, _has_attention_internals),
        Patch("checkpointing", WRITTEN_FOR, _has_layer_checkpointing, required=True),
        Patch("compile", WRITTEN_FOR, _has_compile_hook),
    )
}  # this module's rows of patches.PATCHES


def apply_speedups(model, cfg: ModelConfig, *, train: bool, compile: bool = False) -> list[str]:
    """Apply whisper-tune's patches to a Whisper model (a PeftModel or a plain one); returns
    the names of those applied.

    Always: lean attention (with ``attn_implementation: sdpa``). For training: half-precision
    norms where the holding allows them, checkpointing of ``cfg.gradient_checkpointing`` of
    the layers (reentrant for bitsandbytes holdings; ``auto``: every layer until
    ``fit`` sets the share), and, with ``compile``, per-layer
    ``torch.compile`` (CUDA only: on the CPU the compile costs more than it saves).
    """
    holding: Holding = get_holding(cfg.quantization)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    applied = []
    if cfg.attn_implementation == "sdpa" and usable(PATCHES["lean_attention"], inner):
        use_lean_attention(inner)
        applied.append("lean_attention")
    if train and holding.half_norms and usable(PATCHES["half_norms"], inner) and use_half_norms(inner):
        applied.append("half_norms")
    share = 1.0 if cfg.gradient_checkpointing == AUTO else float(cfg.gradient_checkpointing)  # auto: fit sets it
    if train and share > 0 and usable(PATCHES["checkpointing"], inner):
        set_checkpointing(inner, share, reentrant=holding.reentrant_checkpointing)
        applied.append("checkpointing")
    on_gpu = next(inner.parameters()).device.type == "cuda"
    if train and compile and on_gpu and usable(PATCHES["compile"], inner):
        compile_layers(inner)
        applied.append("compile")
    return applied
