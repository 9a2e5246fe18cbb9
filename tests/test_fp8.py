"""The fp8 holding: E4M3 weights, fp8 matmuls forward and for the input gradient.

The CPU has no fp8 matmuls, so users there fall back to int8-wo; these tests switch the
CPU's emulated ``torch._scaled_mm`` on (``WHISPER_TUNE_FP8_ON_CPU=1``) to check the numerics.
"""

import json
import logging

import pytest
import torch

from whisper_tune.config import LoraSettings, ModelConfig
from whisper_tune.quantization import (
    FP8_ON_CPU_ENV,
    HOLDINGS,
    Fp8Linear,
    Int8WeightOnlyLinear,
    fp8_unavailable,
    get_holding,
)

# E4M3 keeps 3 mantissa bits: round-to-nearest moves a value by at most 2^-4 of itself, and
# per-row scales keep every row's values in E4M3's normal range. Each product term then
# carries a relative error of up to about 2 * 2^-4; those errors are independent across the
# sum, so on random data the relative (Frobenius) error of the output is near
# sqrt(2) * 2^-4 / sqrt(3) ~ 5 %, the RMS of two uniform rounding errors. 8 % bounds it with
# room for the tail; a wrong scale or a transposed weight is off by 100 % or more.
FP8_RELATIVE_ERROR = 0.08


@pytest.fixture()
def fp8_on_cpu(monkeypatch):
    monkeypatch.setenv(FP8_ON_CPU_ENV, "1")


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _pair(in_features=256, out_features=192):
    torch.manual_seed(0)
    dense = torch.nn.Linear(in_features, out_features)
    return dense, Fp8Linear(dense)


def test_forward_and_input_gradient_stay_within_fp8_rounding_of_full_precision():
    dense, layer = _pair()
    x = torch.randn(3, 37, 256, requires_grad=True)  # 111 rows: not a multiple of 16
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = layer(x), dense(x_ref)
    grad = torch.randn_like(y_ref)
    y.backward(grad)
    y_ref.backward(grad)
    assert y.shape == y_ref.shape and x.grad.shape == x.shape
    assert _relative(y, y_ref) < FP8_RELATIVE_ERROR
    assert _relative(x.grad, x_ref.grad) < FP8_RELATIVE_ERROR
    # the scales are applied where they belong: the output equals, to fp32 rounding, the
    # product of the dequantized weight with the row-quantized input
    scale = x.detach().abs().amax(-1, keepdim=True) / 448
    qx = (x.detach() / scale).to(torch.float8_e4m3fn).float() * scale
    weight = layer.weight.float() * layer.weight_scale[:, None]
    torch.testing.assert_close(y.detach(), torch.nn.functional.linear(qx, weight, layer.bias), atol=1e-4, rtol=1e-4)


def test_under_bf16_autocast_the_output_is_bf16_and_as_close():
    dense, layer = _pair()
    x = torch.randn(40, 256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert _relative(y, dense(x)) < FP8_RELATIVE_ERROR


def test_weights_are_held_once_in_8_bits():
    dense, layer = _pair()
    tensors = {**dict(layer.named_parameters()), **dict(layer.named_buffers())}
    assert layer.weight.dtype == torch.float8_e4m3fn and not layer.weight.requires_grad
    assert [n for n, t in tensors.items() if t.shape == dense.weight.shape] == ["weight"]
    held = sum(t.numel() * t.element_size() for t in tensors.values())
    # one byte per weight, plus an fp32 scale per row and the bias
    assert held == 192 * 256 + 4 * 192 + dense.bias.numel() * dense.bias.element_size()


def test_backward_keeps_only_fp8_weights_and_fp32_scales():
    _, layer = _pair()
    x = torch.randn(50, 256, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    # no 16/32-bit weight and no copy of the activations: only the input gradient is computed
    assert sorted(((t.dtype, tuple(t.shape)) for t in saved), key=str) == sorted(
        [(torch.float8_e4m3fn, (192, 256)), (torch.float32, (192,))], key=str
    )
    y.sum().backward()
    assert x.grad is not None and layer.weight.grad is None


def test_the_layer_compiles_without_a_graph_break_forward_and_backward():
    """What ``train.compile`` needs: the whole layer, backward included, in one graph
    (``aot_eager`` traces as Inductor would without generating kernels, so this stays fast)."""
    _, layer = _pair()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(64, 256, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    compiled(x).square().sum().backward()
    layer(x_ref).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_fp8_agrees_with_int8_wo_on_everything_but_how_it_multiplies():
    """Where fp8 falls back, the rest of the package must not see a difference."""
    fp8, wo = HOLDINGS["fp8"], HOLDINGS["int8-wo"]
    fields = set(fp8.__dataclass_fields__) - {"name", "summary", "fp8", "weight_only_int8"}
    assert {f: getattr(fp8, f) for f in fields} == {f: getattr(wo, f) for f in fields}
    assert fp8.quantized and fp8.eval_autocast  # never merged: --exact keeps the adapter unmerged


def test_lora_wraps_fp8_layers_and_only_the_adapters_learn(tiny_model_dir, fp8_on_cpu):
    from whisper_tune.modeling import lora_model

    cfg = ModelConfig(base=str(tiny_model_dir), quantization="fp8", gradient_checkpointing=True)
    model = lora_model(cfg, LoraSettings(r=4, alpha=8, dropout=0.0, targets="qv"), torch.device("cpu"))
    layer = model.base_model.model.model.encoder.layers[0]
    assert isinstance(layer.fc1, Fp8Linear) and isinstance(layer.self_attn.q_proj.base_layer, Fp8Linear)
    assert layer.self_attn.q_proj.lora_A["default"].weight.dtype == torch.float32
    for name, p in model.named_parameters():
        if "lora_B" in name:  # live adapters: the first layers' gradients cross every fp8 layer above
            torch.nn.init.normal_(p, std=0.1)
    model.train()
    batch = {"input_features": torch.randn(1, 80, 3000), "labels": torch.randint(0, 50000, (1, 6))}
    model(**batch).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == with_grad
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_A" in n)


def test_without_fp8_matmuls_the_base_is_held_as_int8_wo_with_one_warning(tiny_model_dir, monkeypatch, caplog):
    from whisper_tune.modeling import load_base

    monkeypatch.delenv(FP8_ON_CPU_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="whisper_tune.quantization"):
        model = load_base(ModelConfig(base=str(tiny_model_dir), quantization="fp8"), torch.device("cpu"))
    layer = model.model.encoder.layers[0]
    assert type(layer.fc1) is Int8WeightOnlyLinear and layer.fc1.weight.dtype == torch.int8
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["model.quantization=fp8 runs as int8-wo: " + fp8_unavailable(torch.device("cpu"))]
    # a GPU without fp8 tensor cores (an A100 is 8.0) is named with its capability
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    assert "A100 (compute capability 8.0) has no fp8 tensor cores" in fp8_unavailable(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert fp8_unavailable(torch.device("cuda")) is None
    assert get_holding("fp8").on(torch.device("cuda")).name == "fp8"


def test_train_on_an_fp8_base_then_evaluate_it_exactly(tiny_model_dir, small_corpus, tmp_path, fp8_on_cpu, monkeypatch):
    """The ``whisper-tune train`` plumbing and exact inference on an fp8 base."""
    from whisper_tune.config import load_train_config
    from whisper_tune.modeling import load_for_inference
    from whisper_tune.training import train

    out = tmp_path / "run"
    overrides = {
        "model.base": tiny_model_dir,
        "model.quantization": "fp8",
        "model.gradient_checkpointing": "true",
        "data.source": small_corpus,
        "data.train_split": "train",
        "data.eval_split": "test",
        "train.output_dir": out,
        "train.batch_size": 2,
        "train.max_steps": 1,
        "train.num_workers": 0,
        "train.warmup_steps": 1,
        "eval.every": -1,
        "lora.r": 4,
        "lora.alpha": 8,
        "lora.targets": "qv",
    }
    result = train(load_train_config(None, [f"{k}={v}" for k, v in overrides.items()]), progress=False)
    run = json.loads((out / "run.json").read_text())
    assert result.steps == 1 and run["quantization"] == "fp8" and run["finished"]
    assert torch.isfinite(torch.tensor(run["final_train_loss"]))
    loaded = load_for_inference(None, str(result.adapter_dir), torch.device("cpu"), exact=True)
    assert loaded.holding.name == "fp8" and not loaded.merged
    assert loaded.describe() == "exact (fp8 base + adapter)"
    layer = loaded.model.base_model.model.model.encoder.layers[0]
    assert isinstance(layer.fc1, Fp8Linear) and isinstance(layer.self_attn.q_proj.base_layer, Fp8Linear)
    # where fp8 cannot run, exact inference says what it held the base as
    monkeypatch.delenv(FP8_ON_CPU_ENV)
    loaded = load_for_inference(None, str(result.adapter_dir), torch.device("cpu"), exact=True)
    assert loaded.holding.name == "int8-wo" and loaded.describe() == "exact (int8-wo base + adapter)"
