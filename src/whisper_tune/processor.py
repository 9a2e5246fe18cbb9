"""Whisper tokenizer and feature extractor, built offline from OpenAI's own vocabulary.

The hub is not reachable everywhere whisper-tune runs, so the processor can be built
from ``multilingual.tiktoken`` (shipped with this package, copied from the
``openai-whisper`` sdist, MIT licence). The conversion follows transformers' own
``convert_openai_to_hf.py``: every multi-byte token becomes exactly one BPE merge, found
by re-running byte-pair encoding on the token up to its own rank, and the special tokens
are appended in OpenAI's order, so the ids equal the hub tokenizer's
(``<|startoftranscript|>`` 50258, ``<|mr|>`` 50320, ``<|transcribe|>`` 50359,
``<|notimestamps|>`` 50363).

Language names and codes are resolved here too, since they are token names.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from importlib import resources
from pathlib import Path

from .errors import UserError

log = logging.getLogger(__name__)

TIKTOKEN_FILE = "multilingual.tiktoken"
N_LANGUAGES_V2 = 99  # large-v2, base, small...: 99 language tokens; large-v3 adds <|yue|> (100)
EOT = 50257  # <|endoftext|>: also pad and bos in Whisper's configs
SOT = 50258  # <|startoftranscript|>: the decoder's start; the language tokens follow it
VOCAB_V2 = 51865  # multilingual up to large-v2: 50257 text tokens + specials + 1501 timestamps
VOCAB_V3 = VOCAB_V2 + 1  # large-v3 and turbo: <|yue|> moves every later special token by one
TIME_PRECISION = 0.02  # seconds per timestamp token
N_TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|>
MAX_LABEL_TOKENS = 448  # Whisper's max_target_positions
CONTROL_TOKENS = (
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
)


def languages() -> dict[str, str]:
    """Whisper's language codes mapped to their names, in token order."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return dict(LANGUAGES)


def resolve_language(language: str) -> str:
    """Return the Whisper language code for a code or an English name ("mr" or "Marathi").

    Raises UserError naming the accepted forms, because a typo here would otherwise
    surface much later as a confusing tokenizer error.
    """
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    codes = languages()
    key = language.strip().lower()
    if key in codes:
        return key
    if key in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[key]
    base = key.replace("_", "-").split("-")[0]  # a Common Voice locale such as zh-CN, sv-SE, pa-IN
    if base != key and base in codes:
        raise UserError(
            f"unknown language {language!r}: Whisper names it {base!r} ({codes[base]}); use --language {base}"
        )
    raise UserError(
        f"unknown language {language!r}: use a Whisper language code such as 'mr', 'hi', 'en' "
        f"or its English name such as 'marathi' ({len(codes)} are known)"
    )


def require_language_token(tokenizer, language: str) -> None:
    """A UserError when ``tokenizer`` has no ``<|language|>`` token: Whisper v1/v2 know 99
    languages and v3 added Cantonese (``yue``), and transformers then builds a prefix with a
    wrong token in its place (``<|translate|>`` for ``yue``) and trains on it silently."""
    if f"<|{language}|>" not in tokenizer.get_vocab():
        known = sum(f"<|{c}|>" in tokenizer.get_vocab() for c in languages())
        raise UserError(
            f"language {language!r} ({languages().get(language, '?')}) is not in this model's tokenizer, which knows "
            f"{known} languages: use a model that has it (Cantonese 'yue' came with large-v3) or another language"
        )


def _read_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    with open(path, encoding="ascii") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _bpe(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Byte-pair encode ``token`` using only merges ranked below ``max_rank``.

    Stopping just before the token's own rank leaves the two parts whose merge makes it.
    """
    parts = [bytes([b]) for b in token]
    while True:
        best = None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < max_rank and (best is None or rank < best[1]):
                best = (i, rank)
        if best is None:
            return parts
        i = best[0]
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]


def _byte_encoder() -> dict[int, str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def vocab_and_merges(tiktoken_path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Convert a tiktoken rank file into GPT-2 style byte-level vocab and ordered merges."""
    ranks = _read_ranks(tiktoken_path)
    byte_encoder = _byte_encoder()

    def as_str(b: bytes) -> str:
        return "".join(byte_encoder[c] for c in b)

    vocab, merges = {}, []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        vocab[as_str(token)] = rank
        if len(token) > 1:
            pair = _bpe(ranks, token, rank)
            if len(pair) == 2:
                merges.append((as_str(pair[0]), as_str(pair[1])))
    return vocab, merges


def special_tokens(num_languages: int = N_LANGUAGES_V2) -> tuple[list[str], list[str]]:
    """(special tokens, timestamp tokens) in the order OpenAI assigns their ids."""
    codes = list(languages())[:num_languages]
    specials = ["<|endoftext|>", "<|startoftranscript|>"]
    specials += [f"<|{c}|>" for c in codes] + list(CONTROL_TOKENS)
    stamps = [f"<|{i * TIME_PRECISION:.2f}|>" for i in range(N_TIMESTAMPS)]
    return specials, stamps


def build_tokenizer(tiktoken_path: Path | None = None, num_languages: int = N_LANGUAGES_V2):
    """A transformers ``WhisperTokenizer`` with the exact ids of OpenAI's multilingual one."""
    from transformers import WhisperTokenizer

    path = tiktoken_path or _bundled_tiktoken()
    vocab, merges = vocab_and_merges(path)
    tok = WhisperTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LABEL_TOKENS)
    specials, stamps = special_tokens(num_languages)
    tok.add_tokens(specials, special_tokens=True)
    tok.add_tokens(stamps, special_tokens=False)
    return tok


def _bundled_tiktoken() -> Path:
    return Path(str(resources.files("whisper_tune") / "assets" / TIKTOKEN_FILE))


def build_processor(out_dir: str | Path, n_mels: int = 80, num_languages: int = N_LANGUAGES_V2) -> Path:
    """Write a ``WhisperProcessor`` folder (tokenizer + feature extractor) to ``out_dir``."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    out = Path(out_dir)
    processor = WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=n_mels),
        tokenizer=build_tokenizer(num_languages=num_languages),
    )
    processor.save_pretrained(out)
    # transformers 5 nests the feature extractor in processor_config.json; older readers
    # (transformers 4, faster-whisper, ctranslate2's converter) look for preprocessor_config.json.
    processor.feature_extractor.save_pretrained(out)
    return out


def cache_root() -> Path:
    """Where whisper-tune keeps what it builds once per machine (processor, demo corpus)."""
    return Path(os.environ.get("WHISPER_TUNE_CACHE", Path.home() / ".cache" / "whisper-tune"))


def offline_processor_dir(n_mels: int = 80, num_languages: int = N_LANGUAGES_V2) -> Path:
    """A cached processor folder, built once per machine (takes a few seconds).

    Lives under ``$WHISPER_TUNE_CACHE`` or ``~/.cache/whisper-tune``; the folder name
    carries a hash of the vocabulary file so a changed file never reuses a stale build.
    """
    root = cache_root()
    digest = hashlib.sha256(_bundled_tiktoken().read_bytes()).hexdigest()[:12]
    out = root / f"processor-{digest}-mel{n_mels}-lang{num_languages}"
    if not (out / "tokenizer_config.json").exists():
        log.debug("building the Whisper processor offline in %s", out)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        build_processor(tmp, n_mels=n_mels, num_languages=num_languages)
        try:
            tmp.rename(out)
        except OSError:  # another process finished first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return out


BUNDLED = "bundled"  # the processor built from the vocabulary shipped with whisper-tune


def processor_path(name: str | None) -> str:
    """Resolve a processor name: ``bundled``/None -> the offline build, else a folder or hub id."""
    return str(offline_processor_dir()) if name in (None, BUNDLED) else str(name)


def load_tokenizer(name: str | None = None):
    """The Whisper tokenizer of a model folder, hub id, or the bundled offline build."""
    from transformers import WhisperTokenizer

    path = processor_path(name)
    try:
        return WhisperTokenizer.from_pretrained(path)
    except OSError as e:
        raise UserError(f"cannot load a Whisper tokenizer from {name!r}: {str(e).splitlines()[0]}") from None
