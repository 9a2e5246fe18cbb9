"""Short encoder windows (``model.encoder_window: longest``): the window a batch gets, the
log-mel cut to it, the encoder patch, and where 30 s windows must stay.

A short window's encoder output is NOT the 30 s encoder's first positions (self-attention
over the padding changes them), so the invariants held here are: the cut features are the
30 s features' first frames; the patched encoder on a short input is transformers' own
encoder with a positional table of that many positions (whisper.cpp's audio_ctx); the switch
off, and 30 s inputs with it on, give bit-identical results to the unpatched model."""

import copy
import json

import numpy as np
import pytest
import torch

from whisper_tune.config import ModelConfig
from whisper_tune.encoder_window import (
    STEP_FRAMES,
    allow_short_windows,
    short_window_forward,
    use_encoder_window,
    window_frames,
)
from whisper_tune.logmel import N_FRAMES, LogMel
from whisper_tune.modeling import load_processor, set_generation_language


@pytest.fixture()
def model(tiny_model_dir):
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(tiny_model_dir).eval()


def _features(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 80, frames, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


# ---- the window ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "window", "frames"),
    [
        (0, "longest", STEP_FRAMES),  # at least one second
        (1, "longest", 100),
        (16000, "longest", 100),  # exactly 1 s
        (16001, "longest", 200),  # a sample more: the next whole second
        (4 * 16000 + 5, "longest", 500),
        (30 * 16000, "longest", N_FRAMES),
        (45 * 16000, "longest", N_FRAMES),  # never beyond 30 s
        (16000, "full", N_FRAMES),
    ],
)
def test_window_is_the_longest_clip_in_whole_seconds(samples, window, frames):
    assert window_frames(samples, window) == frames


def test_unknown_window_is_refused():
    with pytest.raises(ValueError, match="encoder_window"):
        ModelConfig(encoder_window="auto")
    with pytest.raises(ValueError, match="full, longest"):
        window_frames(100, "30")


def test_short_log_mel_is_the_first_frames_of_the_30s_log_mel(processor):
    log_mel = LogMel.of(processor.feature_extractor)
    rng = np.random.default_rng(0)
    audio = torch.zeros(2, 16000 * 3)
    audio[0, : 16000 * 3] = torch.from_numpy(rng.standard_normal(16000 * 3).astype(np.float32)) * 0.1
    audio[1, :37000] = torch.from_numpy(rng.standard_normal(37000).astype(np.float32)) * 0.3
    full = log_mel(audio)
    frames = window_frames(audio.shape[1], "longest")
    short = log_mel(audio, frames=frames)
    assert full.shape[-1] == N_FRAMES and short.shape == (2, full.shape[1], 300)
    torch.testing.assert_close(short, full[..., :frames], rtol=0, atol=1e-5)
    assert torch.equal(log_mel(audio, frames=N_FRAMES), full)  # the default is the 30 s window


# ---- the encoder patch ---------------------------------------------------------------


def _audio_ctx_encoder(encoder, positions: int):
    """transformers' own encoder with a positional table of ``positions`` rows (the first of
    ``encoder``'s): what whisper.cpp's audio_ctx computes, built without the patch."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = copy.deepcopy(encoder.config)
    config.max_source_positions = positions
    short = WhisperEncoder(config).eval()
    state = encoder.state_dict()
    state["embed_positions.weight"] = state["embed_positions.weight"][:positions]
    short.load_state_dict(state)
    return short


def test_short_input_is_the_encoder_with_its_first_positional_embeddings(model):
    encoder = model.model.encoder
    with pytest.raises(ValueError, match="3000"):
        encoder(_features(2, 400))  # transformers refuses it without the patch
    assert allow_short_windows(model)
    x = _features(2, 400)
    with torch.no_grad():
        out = encoder(x).last_hidden_state
        expected = _audio_ctx_encoder(encoder, 200)(x).last_hidden_state
    assert out.shape == (2, 200, model.config.d_model)
    assert torch.equal(out, expected)
    with torch.no_grad():  # not the 30 s encoder's first positions: attention saw the padding there
        padded = encoder(torch.nn.functional.pad(x, (0, N_FRAMES - 400))).last_hidden_state[:, :200]
    assert not torch.allclose(out, padded)


def test_full_window_is_bit_identical_with_and_without_the_patch(model):
    x = _features(2, N_FRAMES, seed=1)
    with torch.no_grad():
        before = model.model.encoder(x).last_hidden_state
        assert use_encoder_window(model, "full") == "full"
        assert "forward" not in model.model.encoder.__dict__  # the switch off touches nothing
        assert use_encoder_window(model, "longest") == "longest"
        after = model.model.encoder(x).last_hidden_state
        own = short_window_forward(model.model.encoder, x).last_hidden_state  # the short path, on 30 s
    assert torch.equal(before, after)
    assert torch.equal(before, own)


@pytest.mark.parametrize("frames", [401, 3002])
def test_a_window_the_encoder_cannot_take_is_refused(model, frames):
    allow_short_windows(model)
    with pytest.raises(ValueError, match="multiple of 2"):
        model.model.encoder(_features(1, frames))


def test_patch_reaches_the_encoder_through_peft_and_trains(model):
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert use_encoder_window(peft, "longest") == "longest"
    peft.train()
    labels = torch.tensor([[50259, 50360, 50364, 400, 500, 50257]] * 2)
    loss = peft(input_features=_features(2, 600), labels=labels).loss
    loss.backward()
    grads = [p.grad for n, p in peft.named_parameters() if "lora_B" in n and "encoder" in n]
    assert torch.isfinite(loss) and grads and all(g is not None and g.abs().sum() > 0 for g in grads)


# ---- the collator, the decoders, long-form ------------------------------------------


def _frames_seen(model, seen: list):
    """A hook that appends the frames of every encoder input to ``seen``."""

    def record(module, args, kwargs):
        seen.append((args[0] if args else kwargs["input_features"]).shape[-1])

    return model.model.encoder.register_forward_pre_hook(record, with_kwargs=True)


def test_collator_cuts_features_and_mask_to_the_window(processor):
    from whisper_tune.features import SpeechCollator

    clips = [np.full(16000 * 2 + 10, 0.1, np.float32), np.full(16000, 0.2, np.float32)]
    examples = [{"audio": a, "labels": [50258, 50259, 400, 50257]} for a in clips]
    args = (processor.feature_extractor, 50258)
    today = SpeechCollator(*args, attention_mask=True)(examples)
    full = SpeechCollator(*args, attention_mask=True, window="full")(examples)
    short = SpeechCollator(*args, attention_mask=True, window="longest")(examples)
    assert all(torch.equal(today[k], full[k]) for k in today)  # off: today's batch exactly
    assert short["input_features"].shape[-1] == short["attention_mask"].shape[-1] == 300
    torch.testing.assert_close(short["input_features"], today["input_features"][..., :300], rtol=0, atol=1e-5)
    assert torch.equal(short["attention_mask"], today["attention_mask"][:, :300])


def test_fast_decoder_and_generate_agree_on_short_windows(model, tiny_model_dir):
    from whisper_tune.inference import TransformersEngine

    processor = load_processor(str(tiny_model_dir))
    set_generation_language(model, processor.tokenizer, "mr", "transcribe")
    model.generation_config.suppress_tokens = list(range(50258, model.config.vocab_size))  # text only
    rng = np.random.default_rng(3)
    audios = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000 * 2 + 7, 16000, 9000)]
    seen = []
    hook = _frames_seen(model, seen)
    runs = {}
    for clips in ("fast", "generate"):
        engine = TransformersEngine(model, processor, "mr", clips=clips, encoder_window="longest")
        runs[clips] = engine.decode_clips(audios, "mr", "transcribe", 8, min_new_tokens=8)
    hook.remove()
    assert seen == [300, 300]  # both decoders ran the encoder on the 3 s window
    assert runs["fast"] == runs["generate"] and any(runs["fast"])


def test_transcription_keeps_30s_windows(model, tiny_model_dir):
    from whisper_tune.inference import TransformersEngine

    processor = load_processor(str(tiny_model_dir))
    set_generation_language(model, processor.tokenizer, "mr", "transcribe")
    engine = TransformersEngine(model, processor, "mr", encoder_window="longest")
    seen = []
    hook = _frames_seen(model, seen)
    engine.transcribe([np.zeros(16000 * 2, np.float32)], batch_size=1)
    hook.remove()
    assert seen and set(seen) == {N_FRAMES}


def test_decoder_cache_keeps_windows_within_one_30s_window(model):
    from whisper_tune.inference.greedy import decoder_for

    with torch.no_grad():
        a = decoder_for(model, 2, 12, torch.float32, positions=500)
        b = decoder_for(model, 2, 12, torch.float32, positions=600)
        assert decoder_for(model, 2, 12, torch.float32, positions=500) is a  # both kept: 1100 <= 1500
        assert a.k_cross.shape[3] == 500 and b.k_cross.shape[3] == 600
        decoder_for(model, 2, 12, torch.float32, positions=700)  # 1800 > 1500: the oldest goes
        cached = [k[0].positions for k in model.__dict__["_whisper_tune_decoders"]]
        assert sorted(cached) == [600, 700]
        full = decoder_for(model, 2, 12, torch.float32)  # 30 s: alone
        assert list(model.__dict__["_whisper_tune_decoders"].values()) == [full]
        assert full.k_cross.shape[3] == model.config.max_source_positions


def test_training_and_its_evaluation_run_in_short_windows(tiny_model_dir, small_corpus, tmp_path, monkeypatch):
    """A run with model.encoder_window=longest: every encoder input of its training steps and
    of its evaluation on the eval split is shorter than 30 s, and the run finishes scored."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from whisper_tune.config import load_train_config
    from whisper_tune.training import train

    seen = []
    forward = WhisperEncoder.forward

    def recording(self, input_features, *args, **kwargs):
        seen.append(input_features.shape[-1])
        return forward(self, input_features, *args, **kwargs)

    monkeypatch.setattr(WhisperEncoder, "forward", recording)  # 30 s inputs reach transformers' own
    monkeypatch.setattr("whisper_tune.encoder_window.short_window_forward", _recording_short(seen))
    overrides = {
        "model.base": tiny_model_dir,
        "model.quantization": "none",
        "model.gradient_checkpointing": "false",
        "model.encoder_window": "longest",
        "data.source": small_corpus,
        "data.train_split": "train",
        "data.eval_split": "test",
        "train.output_dir": tmp_path / "run",
        "train.batch_size": 2,
        "train.max_steps": 2,
        "train.num_workers": 0,
        "eval.every": 1,
        "eval.max_samples": 2,
        "eval.max_new_tokens": 4,
        "lora.r": 4,
    }
    result = train(load_train_config(None, [f"{k}={v}" for k, v in overrides.items()]), progress=False)
    assert result.steps == 2
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_wer" in r for r in evals)
    assert seen and max(seen) < N_FRAMES and all(f % STEP_FRAMES == 0 for f in seen)


def _recording_short(seen: list):
    from whisper_tune import encoder_window

    short = encoder_window.short_window_forward

    def record(self, input_features, *args, **kwargs):
        seen.append(input_features.shape[-1])
        return short(self, input_features, *args, **kwargs)

    return record
