import base64

import pytest

from whisper_tune.errors import UserError
from whisper_tune.processor import (
    _bundled_tiktoken,
    build_processor,
    resolve_language,
    special_tokens,
)

SAMPLES = [
    "आज हवा छान आहे.",
    "माझे नाव सुनील आहे, मी पुण्यात राहतो!",
    "The quick brown fox jumps over the lazy dog 12345.",
    "मुझे हिंदी आती है।",
    "  spaces   and\ttabs, émigré café — naïve?",
]


def test_special_token_ids_match_openai(tokenizer):
    ids = tokenizer.convert_tokens_to_ids(
        [
            "<|endoftext|>",
            "<|startoftranscript|>",
            "<|en|>",
            "<|mr|>",
            "<|translate|>",
            "<|transcribe|>",
            "<|notimestamps|>",
            "<|0.00|>",
            "<|30.00|>",
        ]
    )
    assert ids == [50257, 50258, 50259, 50320, 50358, 50359, 50363, 50364, 51864]
    assert len(tokenizer) == 51865  # the vocab_size of every multilingual v1/v2 checkpoint


def _tiktoken_encoding():
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {}
    for line in _bundled_tiktoken().read_text().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    specials, stamps = special_tokens()
    names = specials + stamps
    return tiktoken.Encoding(
        name="whisper-multilingual",
        explicit_n_vocab=len(ranks) + len(names),
        pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=ranks,
        special_tokens={t: len(ranks) + i for i, t in enumerate(names)},
    )


@pytest.mark.parametrize("text", SAMPLES)
def test_text_ids_equal_openai_tiktoken(tokenizer, text):
    """OpenAI's own tokenizer (tiktoken on the same file) is the reference."""
    enc = _tiktoken_encoding()
    assert tokenizer.encode(text, add_special_tokens=False) == enc.encode(text)
    assert tokenizer.decode(enc.encode(text)) == text


def test_language_prefix(tokenizer):
    tokenizer.set_prefix_tokens(language="mr", task="transcribe", predict_timestamps=False)
    ids = tokenizer("आज हवा छान आहे.").input_ids
    assert ids[:4] == [50258, 50320, 50359, 50363] and ids[-1] == 50257
    assert tokenizer.decode(ids, skip_special_tokens=True) == "आज हवा छान आहे."


@pytest.mark.parametrize("given, code", [("mr", "mr"), ("Marathi", "mr"), (" HINDI ", "hi"), ("en", "en")])
def test_resolve_language(given, code):
    assert resolve_language(given) == code


def test_unknown_language_names_the_fix():
    with pytest.raises(UserError, match="unknown language 'klingon'.*'mr'"):
        resolve_language("klingon")


def test_build_processor_128_mels_and_v3_languages(tmp_path):
    from transformers import WhisperProcessor

    out = build_processor(tmp_path / "p", n_mels=128, num_languages=100)
    proc = WhisperProcessor.from_pretrained(out)
    assert proc.feature_extractor.feature_size == 128
    # large-v3 adds <|yue|> after the 99 v2 languages, shifting the control tokens by one
    assert proc.tokenizer.convert_tokens_to_ids(["<|yue|>", "<|transcribe|>"]) == [50358, 50360]


@pytest.mark.parametrize("code", ["mn", "vi", "ka"])
def test_common_voice_sample_languages_have_their_token(tokenizer, code):
    from whisper_tune.features import set_prefix

    set_prefix(tokenizer, resolve_language(code), "transcribe")
    assert tokenizer.convert_ids_to_tokens(tokenizer.prefix_tokens)[1] == f"<|{code}|>"


def test_a_language_the_model_lacks_is_one_line_not_a_wrong_prefix(tokenizer):
    """transformers builds <|translate|> into the prefix of 'yue' on a 99-language tokenizer."""
    from whisper_tune.features import set_prefix

    with pytest.raises(
        UserError, match=r"language 'yue' \(cantonese\) is not in this model's tokenizer, which knows 99"
    ):
        set_prefix(tokenizer, resolve_language("yue"), "transcribe")


@pytest.mark.parametrize("locale, code", [("zh-CN", "zh"), ("sv-SE", "sv"), ("pa-IN", "pa")])
def test_common_voice_locales_name_the_whisper_code(locale, code):
    with pytest.raises(UserError, match=f"Whisper names it '{code}'.*use --language {code}$"):
        resolve_language(locale)
