"""The fast greedy decoder reproduces transformers' greedy ``generate`` token for token."""

import pytest
import torch

from whisper_tune.inference.greedy import DecodeSpec, GreedyDecoder, prompt_ids, supports_fast_path
from whisper_tune.modeling import load_processor, set_generation_language


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    tokenizer = load_processor(str(tiny_model_dir)).tokenizer
    set_generation_language(model, tokenizer, "mr", "transcribe")
    return model, tokenizer


def _features(n: int) -> torch.Tensor:
    return torch.randn(n, 80, 3000, generator=torch.Generator().manual_seed(n)).clamp(-1, 1)


def _generate(model, features, **kwargs) -> list[list[int]]:
    with torch.inference_mode():
        out = model.generate(input_features=features, language="mr", task="transcribe", **kwargs).tolist()
    eos = model.generation_config.eos_token_id
    prompt_len = 4 if out[0][:1] == [model.generation_config.decoder_start_token_id] else 0
    return [
        row[prompt_len:][: row[prompt_len:].index(eos)] if eos in row[prompt_len:] else row[prompt_len:] for row in out
    ]


def _fast(model, tokenizer, features, batch, max_new, min_new=0) -> list[list[int]]:
    prompt = prompt_ids(model, tokenizer, "mr", "transcribe")
    with torch.inference_mode():
        decoder = GreedyDecoder(model, DecodeSpec(batch, len(prompt) + max_new), torch.float32)
        return decoder(features, prompt, max_new, min_new)


def test_tokens_equal_generate_with_suppression_and_a_padded_batch(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    features = _features(3)
    gc = model.generation_config
    plain = _generate(model, features, max_new_tokens=12)
    # suppress what the model wants most: the first token at the first step, the second later
    gc.begin_suppress_tokens = [plain[0][0]]
    gc.suppress_tokens = [plain[1][1]] if len(plain[1]) > 1 else [plain[2][0]]
    try:
        expected = _generate(model, features, max_new_tokens=12)
        assert expected != plain  # the suppression lists change the result...
        got = _fast(model, tokenizer, features, batch=4, max_new=12)  # 3 clips in a batch of 4
        assert got == expected  # ...and both engines apply them alike
        assert _fast(model, tokenizer, features[:2], batch=2, max_new=12) == expected[:2]
    finally:
        gc.begin_suppress_tokens, gc.suppress_tokens = None, None


def test_min_new_tokens_suppresses_end_of_text_like_generate(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    features = _features(2)
    expected = _generate(model, features, max_new_tokens=10, min_new_tokens=10)
    got = _fast(model, tokenizer, features, batch=2, max_new=10, min_new=10)
    assert got == expected and all(len(row) == 10 for row in got)


def test_fast_path_is_only_for_plain_models(model_and_tokenizer, tiny_model_dir):
    from whisper_tune.config import LoraSettings, ModelConfig
    from whisper_tune.modeling import add_lora, load_base

    model, _ = model_and_tokenizer
    assert supports_fast_path(model)
    cfg = ModelConfig(base=str(tiny_model_dir), quantization="none", gradient_checkpointing=False)
    assert not supports_fast_path(add_lora(load_base(cfg, torch.device("cpu")), LoraSettings(), cfg))
    assert not supports_fast_path(torch.nn.Linear(2, 2))


def test_evaluation_engines_agree(model_and_tokenizer, small_corpus, tmp_path, tiny_model_dir):
    from whisper_tune.config import DataConfig
    from whisper_tune.evaluation import decode_dataset
    from whisper_tune.inference import TransformersEngine
    from whisper_tune.prepare import prepare_split

    model, _ = model_and_tokenizer
    processor = load_processor(str(tiny_model_dir))
    data = prepare_split(DataConfig(source=str(small_corpus), language="mr"), "train", tmp_path, str(tiny_model_dir))
    # exactly 8 new tokens (min = max): the random model would stop at once
    model.generation_config.suppress_tokens = list(range(50258, model.config.vocab_size))  # text tokens only
    runs = {
        engine: decode_dataset(
            TransformersEngine(model, processor, "mr", clips=engine), data, 3, 8, max_samples=5, min_new_tokens=8
        )
        for engine in ("fast", "generate")
    }
    model.generation_config.suppress_tokens = None
    assert runs["fast"].hypotheses == runs["generate"].hypotheses
    assert len(runs["fast"].hypotheses) == 5 and any(runs["fast"].hypotheses)
