import math

import pytest
import torch

from whisper_tune.config import LoraSettings, ModelConfig
from whisper_tune.errors import UserError
from whisper_tune.features import SpeechCollator
from whisper_tune.modeling import (
    add_lora,
    load_base,
    load_processor,
    lora_model,
    parameter_counts,
    resolve_model,
    set_generation_language,
)
from whisper_tune.prepare import load_prepared, prepare
from whisper_tune.sources import open_source


@pytest.fixture(scope="module")
def one_batch(four_clips, tiny_model_dir, tmp_path_factory):
    ds = load_prepared(
        prepare(
            open_source(str(four_clips)), None, tmp_path_factory.mktemp("p") / "four", num_proc=1, progress=False
        ).out
    ).with_format("numpy")
    processor = load_processor(str(tiny_model_dir))
    return SpeechCollator(processor.feature_extractor, 50258)([ds[i] for i in range(len(ds))])


@pytest.mark.parametrize("quantization", ["int8", "int8-wo", "nf4", "none"])
def test_lora_overfits_one_batch_and_base_stays_frozen(quantization, tiny_model_dir, one_batch):
    torch.manual_seed(0)
    cfg = ModelConfig(base=str(tiny_model_dir), quantization=quantization, gradient_checkpointing=False)
    model = lora_model(cfg, LoraSettings(r=16, alpha=32, dropout=0.0, targets="qv"), torch.device("cpu"))
    if quantization == "int8-wo":
        from whisper_tune.quantization import Int8WeightOnlyLinear

        layer = model.base_model.model.model.encoder.layers[0]
        assert isinstance(layer.fc1, Int8WeightOnlyLinear) and layer.fc1.weight.dtype == torch.int8
    elif quantization != "none":
        import bitsandbytes as bnb

        kind = bnb.nn.Linear8bitLt if quantization == "int8" else bnb.nn.Linear4bit
        assert isinstance(model.base_model.model.model.encoder.layers[0].fc1, kind)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    optimizer = torch.optim.AdamW(lora_params := [p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    model.train()
    for _ in range(15):
        loss = model(**one_batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] <= losses[0] / 2, losses
    assert losses[-1] < math.log(51865), losses  # better than guessing uniformly
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n].detach(), v) for n, v in frozen.items())
    assert any(not torch.equal(after[n].detach(), v) for n, v in lora.items())
    assert len(lora_params) == len(lora)


def test_large_v2_parameter_count_matches_the_recipe():
    """15,728,640 trainable of 1,559,033,600 for LoRA r=32 on q/v of large-v2 (built on 'meta')."""
    from transformers import WhisperForConditionalGeneration

    from whisper_tune.modeling import architecture_config

    config = architecture_config("large-v2")
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model = add_lora(
        model,
        LoraSettings(r=32, alpha=64, dropout=0.05, targets="qv"),
        ModelConfig(quantization="none", gradient_checkpointing=False),
    )
    assert parameter_counts(model) == (15_728_640, 1_559_033_600)


def test_generation_language_is_forced(tiny_model_dir):
    processor = load_processor(str(tiny_model_dir))
    cfg = ModelConfig(base=str(tiny_model_dir), quantization="none")
    model = load_base(cfg, torch.device("cpu"))
    set_generation_language(model, processor.tokenizer, "mr", "transcribe")
    assert model.generation_config.lang_to_id["<|mr|>"] == 50320
    from transformers import LogitsProcessor, LogitsProcessorList

    class Spy(LogitsProcessor):
        prompts = []

        def __call__(self, input_ids, scores):
            self.prompts.append(input_ids[0].tolist())
            return scores

    model.generate(
        input_features=torch.zeros(1, 80, 3000), max_new_tokens=2, logits_processor=LogitsProcessorList([Spy()])
    )
    assert Spy.prompts[0] == [50258, 50320, 50359, 50363]  # <|sot|><|mr|><|transcribe|><|notimestamps|>


def test_model_errors(tmp_path):
    with pytest.raises(UserError, match="not a model folder"):
        resolve_model(str(tmp_path))
    with pytest.raises(UserError, match="not found"):
        resolve_model("./missing-model")
    assert resolve_model("openai/whisper-large-v2") == "openai/whisper-large-v2"


def test_quantization_without_bitsandbytes_says_so(monkeypatch):
    import sys

    from whisper_tune.quantization import get_holding

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import now raises ImportError
    with pytest.raises(UserError, match="quantization nf4 needs bitsandbytes.*model.quantization=none"):
        get_holding("nf4").check_available(torch.device("cpu"))
    get_holding("none").check_available(torch.device("cpu"))


@pytest.mark.parametrize(
    "targets, freeze, expected",
    [
        (
            "qv",
            False,
            {
                "encoder.self_attn.q_proj",
                "encoder.self_attn.v_proj",
                "decoder.self_attn.q_proj",
                "decoder.self_attn.v_proj",
                "decoder.encoder_attn.q_proj",
                "decoder.encoder_attn.v_proj",
            },
        ),
        (
            "all-linear",
            True,
            {
                f"decoder.{a}.{m}"
                for a in ("self_attn", "encoder_attn")
                for m in ("q_proj", "k_proj", "v_proj", "out_proj")
            }
            | {"decoder.fc1", "decoder.fc2"},
        ),
        (["fc1"], False, {"encoder.fc1", "decoder.fc1"}),
    ],
)
def test_lora_targets_and_encoder_freezing(tiny_model_dir, targets, freeze, expected):
    import re

    cfg = ModelConfig(base=str(tiny_model_dir), quantization="none", gradient_checkpointing=False)
    model = lora_model(cfg, LoraSettings(r=2, alpha=4, targets=targets, freeze_encoder=freeze), torch.device("cpu"))
    adapted = {
        re.sub(r".*model\.(encoder|decoder)\.layers\.\d+\.", r"\1.", n.rsplit(".lora_A", 1)[0])
        for n, _ in model.named_parameters()
        if "lora_A" in n
    }
    assert adapted == expected


def test_int8_weight_only_stays_close_to_full_precision(tiny_model_dir, one_batch):
    """Per-row int8 weights change the logits by a small fraction of their spread."""
    cfg = ModelConfig(base=str(tiny_model_dir), quantization="none", gradient_checkpointing=False)
    full = load_base(cfg, torch.device("cpu")).eval()
    wo = load_base(ModelConfig(base=str(tiny_model_dir), quantization="int8-wo"), torch.device("cpu")).eval()
    with torch.no_grad():
        a, b = full(**one_batch).logits, wo(**one_batch).logits
    assert (a - b).abs().max() < 0.05 * (a.max() - a.min())
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.95


def _lora_grads(tiny_model_dir, one_batch, quantization, share):
    torch.manual_seed(0)
    cfg = ModelConfig(base=str(tiny_model_dir), quantization=quantization, gradient_checkpointing=share)
    model = lora_model(cfg, LoraSettings(r=8, alpha=16, dropout=0.0), torch.device("cpu"))
    torch.nn.init.normal_(next(p for n, p in model.named_parameters() if "lora_B" in n))  # a live path
    model.train()
    model(**one_batch).loss.backward()
    layers = model.base_model.model.model.encoder.layers
    flags = [layer.gradient_checkpointing for layer in layers]
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, flags


@pytest.mark.parametrize("quantization", ["int8", "int8-wo", "none"])
def test_checkpointing_a_share_of_layers_keeps_every_gradient(quantization, tiny_model_dir, one_batch):
    plain, flags = _lora_grads(tiny_model_dir, one_batch, quantization, False)
    assert flags == [False, False]
    for share, expected in ((0.5, [True, False]), (True, [True, True])):
        grads, flags = _lora_grads(tiny_model_dir, one_batch, quantization, share)
        assert flags == expected
        assert grads.keys() == plain.keys()
        # every adapter, encoder and decoder alike, gets the gradient it gets without recomputation
        # (reentrant checkpointing on bitsandbytes bases loses it unless the layer inputs require grad)
        assert sum(g.abs().sum() > 0 for g in grads.values()) >= len(grads) // 2
        for name in plain:
            torch.testing.assert_close(grads[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_gradient_checkpointing_share_is_validated():
    with pytest.raises(ValueError, match="share of layers"):
        ModelConfig(gradient_checkpointing=1.5)


def test_int8_weight_only_backward_keeps_int8_not_a_dequantized_copy():
    from whisper_tune.quantization import Int8WeightOnlyLinear

    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 96)
    layer = Int8WeightOnlyLinear(dense)
    x = torch.randn(5, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    assert not [t for t in saved if t.shape == (96, 64) and t.is_floating_point()]
    assert any(t.dtype == torch.int8 for t in saved)
    y.square().sum().backward()
    # the same gradient as autograd through the dequantized weight
    x2 = x.detach().clone().requires_grad_(True)
    weight = layer.weight.float() * layer.weight_scale[:, None]
    torch.nn.functional.linear(x2, weight, layer.bias).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(weight, dense.weight, atol=dense.weight.abs().max().item() / 127, rtol=0)


def test_half_norms_stay_in_bf16_under_autocast(tiny_model_dir):
    from transformers import WhisperForConditionalGeneration

    from whisper_tune.speedups import HalfLayerNorm, use_half_norms

    fp32 = WhisperForConditionalGeneration.from_pretrained(tiny_model_dir)
    assert use_half_norms(fp32) == 0  # fp32 norms (CPU, bitsandbytes bases) are left alone
    model = WhisperForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    assert use_half_norms(model) == 2 * 2 + 3 * 2 + 2  # per encoder layer, per decoder layer, final ones
    norm = model.model.encoder.layers[0].self_attn_layer_norm
    assert isinstance(norm, HalfLayerNorm)
    x = torch.randn(2, 7, norm.normalized_shape[0], dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.float16):  # a dtype that is not the weights': no cast to it
        out = norm(x)
    reference = torch.nn.functional.layer_norm(
        x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps
    )
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=2e-2, rtol=2e-2)


def test_lean_attention_equals_transformers(tiny_model_dir):
    from transformers import WhisperForConditionalGeneration

    from whisper_tune.speedups import use_lean_attention

    torch.manual_seed(0)
    features = torch.randn(2, 80, 3000)
    labels = torch.randint(0, 50000, (2, 6))
    reference = WhisperForConditionalGeneration.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    lean = WhisperForConditionalGeneration.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    assert use_lean_attention(lean) == 2 + 2  # encoder self-attention, decoder cross-attention
    outputs = []
    for model in (reference, lean):
        x = features.clone().requires_grad_(True)
        out = model(input_features=x, labels=labels, use_cache=False)
        out.loss.backward()
        outputs.append((out.logits.detach(), x.grad))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outputs[1][1], outputs[0][1], atol=1e-6, rtol=1e-3)
    with torch.inference_mode():  # generation brings a cache: transformers' own forward serves it
        kwargs = {"input_features": features, "max_new_tokens": 5, "min_new_tokens": 5}
        assert lean.generate(**kwargs).tolist() == reference.generate(**kwargs).tolist()


def test_decoder_rank_applies_to_every_decoder_adapter_and_keeps_the_scale(tiny_model_dir, tmp_path):
    """lora.decoder_r: decoder adapters (self and cross attention, MLP) take the smaller
    rank, encoder adapters keep lora.r, every adapter keeps alpha / rank; the saved adapter
    loads back with those shapes."""
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    cfg = ModelConfig(base=str(tiny_model_dir), quantization="none", gradient_checkpointing=False)
    lora = LoraSettings(r=8, alpha=16, targets="all-linear", decoder_r=2)
    model = lora_model(cfg, lora, torch.device("cpu"))
    ranks = {n: p.shape[0] for n, p in model.named_parameters() if n.endswith("lora_A.default.weight")}
    assert ranks and {r for n, r in ranks.items() if ".decoder." in n} == {2}
    assert {r for n, r in ranks.items() if ".encoder." in n} == {8}
    scales = {m.scaling["default"] for m in model.modules() if isinstance(getattr(m, "scaling", None), dict)}
    assert scales == {2.0}
    model.save_pretrained(tmp_path)
    again = PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained(tiny_model_dir), tmp_path)
    assert {n: p.shape[0] for n, p in again.named_parameters() if n.endswith("lora_A.default.weight")} == ranks
    with pytest.raises(ValueError, match="decoder_r"):
        LoraSettings(decoder_r=0)
