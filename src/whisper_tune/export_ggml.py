"""Export a transformers Whisper checkpoint to whisper.cpp's single-file ggml model.

whisper.cpp (and everything built on it: ``whisper-cli``, pywhispercpp, the mobile and
WebAssembly ports) still loads the legacy ``ggml-model.bin`` layout its own converters
``convert-pt-to-ggml.py`` and ``convert-h5-to-ggml.py`` write. This module writes that
layout directly, with no clone of whisper.cpp or openai-whisper:

- **Header**: magic ``0x67676d6c``, then eleven int32 hyper-parameters (n_vocab,
  n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer, n_text_ctx, n_text_state,
  n_text_head, n_text_layer, n_mels, ftype). ``n_text_ctx`` is ``max_target_positions``
  (the rows of the decoder's positional embedding); whisper.cpp tells multilingual,
  English-only and large-v3 models apart by ``n_vocab`` (51865 / 51864 / 51866) and sizes
  its input by ``n_mels`` (80 or 128), so both come from config.json unchanged.
- **Mel filters**: int32 n_mel, n_fft, then n_mel x (n_fft/2+1) float32. whisper.cpp
  computes the log-mel spectrogram with these filters, so they must be OpenAI's Slaney-
  normalised ones; transformers' ``WhisperFeatureExtractor(feature_size=n_mels)`` builds
  the same filters (librosa's formula) as [n_freq, n_mels], which is transposed here.
- **Vocabulary**: the byte-level BPE tokens of the checkpoint's own tokenizer, ids 0 up to
  ``<|endoftext|>``, each as int32 length + raw bytes (GPT-2's byte-to-unicode mapping
  undone), in id order: the same 50257 entries (id 50256 is the empty token) that
  convert-pt-to-ggml.py writes from ``multilingual.tiktoken``. Special tokens are not
  written; whisper.cpp derives their ids from n_vocab and names them itself.
- **Tensors**: per tensor int32 n_dims, name length, ggml type, the dims innermost first,
  the name, then the data. Names follow OpenAI's (``encoder.blocks.N.attn.query``,
  ``mlp.0``/``mlp.2``, ``attn_ln``, ``cross_attn_ln``, ``mlp_ln``, ``ln_post``, ``ln``,
  ``positional_embedding``, ``token_embedding``); ``proj_out`` is tied to the token
  embedding and not written. The conv biases become [n, 1].

Tensor types follow what whisper.cpp's loader allocates (it rejects any other): biases,
layer norms and both positional embeddings stay float32; the conv kernels are f16 unless
the whole file is f32; every other 2-D weight (attention, MLP, token embedding) has the
file's type. Quantized files (q8_0, q5_0, q4_0) are what whisper.cpp's ``quantize`` tool
would make from the f16 file: those 2-D weights are quantized with ggml's reference block
formulas re-implemented in numpy, the conv kernels stay f16, and ftype carries ggml's
quantization version (2000 + ftype).

Verified (tests/test_export_ggml.py) with the whisper.cpp 1.8.5 that pywhispercpp 1.5.1
ships, on tiny random models of both shapes (80 mels / 51865 tokens, 128 mels / 51866):
on identical log-mel input, whisper.cpp's logits at every decoder position match
transformers' within 3e-3 of the largest logit for f16 (measured 5e-4), and within 2e-2 /
4e-2 for q8_0 / q5_0 against a transformers model holding the same rounded weights;
whisper.cpp's own log-mel (it pads the mel, not the audio) changes nothing beyond f16
noise; and its greedy transcript of the same audio is token-for-token transformers' for
f16 (q8_0 agrees on a long prefix). On real Whisper base weights the f16 file's logits are
within ~3% of the largest logit (whisper.cpp computes in f16 with a tanh GELU), so greedy
choices agree except at near-ties. f32 files load, but whisper.cpp's CPU encoder aborts
on them (ggml's im2col wants f16 conv kernels, whisper.cpp issue 2557): use f16.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import numpy as np

from .errors import UserError

log = logging.getLogger(__name__)

GGML_MAGIC = 0x67676D6C  # "ggml"
GGML_QNT_VERSION = 2  # ggml's quantization format version, stored as ftype // 1000 in quantized files
GGML_QNT_VERSION_FACTOR = 1000
SAMPLE_RATE = 16000
N_FFT = 400  # whisper.cpp hard-codes Whisper's 25 ms window
QK = 32  # elements per block in every ggml type offered here

# ggml_type ids (ggml.h) for the tensors, and the file-level ggml_ftype for each choice
GGML_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q5_0": 6, "q8_0": 8}
FTYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q5_0": 8}
QUANTIZED = ("q8_0", "q5_0", "q4_0")

# HF module path inside a layer -> whisper.cpp name (k_proj of cross-attention is handled apart)
LAYER_MAP = {
    "self_attn.q_proj": "attn.query",
    "self_attn.k_proj": "attn.key",
    "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query",
    "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value",
    "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0",
    "fc2": "mlp.2",
    "final_layer_norm": "mlp_ln",
}
TOP_MAP = {
    "encoder.conv1.weight": "encoder.conv1.weight",
    "encoder.conv1.bias": "encoder.conv1.bias",
    "encoder.conv2.weight": "encoder.conv2.weight",
    "encoder.conv2.bias": "encoder.conv2.bias",
    "encoder.embed_positions.weight": "encoder.positional_embedding",
    "encoder.layer_norm.weight": "encoder.ln_post.weight",
    "encoder.layer_norm.bias": "encoder.ln_post.bias",
    "decoder.embed_tokens.weight": "decoder.token_embedding.weight",
    "decoder.embed_positions.weight": "decoder.positional_embedding",
    "decoder.layer_norm.weight": "decoder.ln.weight",
    "decoder.layer_norm.bias": "decoder.ln.bias",
}
SKIPPED = ("proj_out.weight",)  # tied to decoder.embed_tokens; whisper.cpp reuses the token embedding
ALWAYS_F32 = ("encoder.positional_embedding", "decoder.positional_embedding")  # 2-D, but f32 in the loader
CONV_WEIGHTS = ("encoder.conv1.weight", "encoder.conv2.weight")  # f16 unless the file is f32
PROGRESS_MIN_ELEMENTS = 30_000_000  # show a progress bar from about Whisper base upwards
RUN_HINT = "whisper-cli -m {path} -f audio.wav"


# ---- reading the checkpoint -------------------------------------------------------------


def _read_config(model_dir: Path) -> dict:
    """config.json of a transformers Whisper folder, or a UserError that says what it is instead."""
    if model_dir.is_file() or not (model_dir / "config.json").is_file():
        raise UserError(
            f"{model_dir} is not a transformers Whisper checkpoint folder (no config.json); "
            f"an OpenAI .pt checkpoint needs whisper.cpp's own converter, models/convert-pt-to-ggml.py"
        )
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "whisper":
        raise UserError(
            f"{model_dir} holds a {config.get('model_type')!r} model, not Whisper: export-ggml needs Whisper"
        )
    return config


def _hparams(config: dict) -> list[int]:
    """The eleven header ints (without ftype), checked against what whisper.cpp assumes."""
    d = config["d_model"]
    for key in ("encoder_ffn_dim", "decoder_ffn_dim"):
        if config.get(key, 4 * d) != 4 * d:
            raise UserError(f"whisper.cpp assumes {key} = 4 x d_model ({4 * d}); this model has {config[key]}")
    return [
        config["vocab_size"],
        config["max_source_positions"],
        d,
        config["encoder_attention_heads"],
        config["encoder_layers"],
        config["max_target_positions"],
        d,
        config["decoder_attention_heads"],
        config["decoder_layers"],
        config["num_mel_bins"],
    ]


def _weight_files(model_dir: Path) -> list[Path]:
    """The checkpoint's weight files: safetensors (single or sharded), else pytorch_model.bin."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [model_dir / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / name).is_file():
            return [model_dir / name]
    raise UserError(f"{model_dir} has a config.json but no model.safetensors or pytorch_model.bin")


def _iter_tensors(model_dir: Path):
    """(HF name without the ``model.`` prefix, float32 array), one tensor at a time so that
    large-v3 never sits in memory twice."""
    import torch

    for path in _weight_files(model_dir):
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    yield key.removeprefix("model."), f.get_tensor(key).to(torch.float32).numpy()
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            for key, t in state.items():
                yield key.removeprefix("model."), t.to(torch.float32).numpy()


def ggml_name(hf_name: str) -> str | None:
    """whisper.cpp's name for an HF parameter (None for the tied output projection)."""
    if hf_name in SKIPPED:
        return None
    if hf_name in TOP_MAP:
        return TOP_MAP[hf_name]
    parts = hf_name.split(".")  # encoder.layers.3.self_attn.q_proj.weight
    if len(parts) >= 5 and parts[1] == "layers" and ".".join(parts[3:-1]) in LAYER_MAP:
        return f"{parts[0]}.blocks.{parts[2]}.{LAYER_MAP['.'.join(parts[3:-1])]}.{parts[-1]}"
    raise UserError(f"unexpected tensor {hf_name!r} in the checkpoint: not a plain Whisper (merge adapters first)")


# ---- mel filters and vocabulary ----------------------------------------------------------


def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney mel filters [n_mels, n_fft/2+1] as whisper.cpp applies them (OpenAI's mel_filters.npz)."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLE_RATE, n_fft=N_FFT)
    return np.ascontiguousarray(np.asarray(fe.mel_filters, dtype=np.float32).T)  # [n_freq, n_mels] -> [n_mels, n_freq]


def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {v: k for k, v in bytes_to_unicode().items()}


def _bpe_vocab(model_dir: Path) -> dict[str, int]:
    """token -> id of the folder's byte-level BPE (tokenizer.json, else vocab.json)."""
    tok_json, vocab_json = model_dir / "tokenizer.json", model_dir / "vocab.json"
    if tok_json.is_file():
        data = json.loads(tok_json.read_text(encoding="utf-8"))
        vocab = dict(data["model"]["vocab"])
        vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
        return vocab
    if vocab_json.is_file():
        vocab = json.loads(vocab_json.read_text(encoding="utf-8"))
        added = model_dir / "added_tokens.json"
        if added.is_file():
            vocab.update(json.loads(added.read_text(encoding="utf-8")))
        return vocab
    raise UserError(
        f"no tokenizer in {model_dir} (tokenizer.json or vocab.json): save the processor there, "
        f"e.g. `whisper-tune make-processor --out {model_dir}`"
    )


def vocab_bytes(model_dir: Path) -> list[bytes]:
    """The text tokens' raw bytes in id order, up to (not including) ``<|endoftext|>``."""
    vocab = _bpe_vocab(model_dir)
    if "<|endoftext|>" not in vocab:
        raise UserError(f"the tokenizer in {model_dir} has no <|endoftext|>: not a Whisper tokenizer")
    n_text = vocab["<|endoftext|>"]
    decoder = _byte_decoder()
    tokens = [b""] * n_text
    for token, i in vocab.items():
        if i < n_text:
            tokens[i] = bytes(decoder[c] for c in token)
    return tokens


# ---- quantization (ggml's reference formulas, block by block) ------------------------------


def _blocks(x: np.ndarray) -> np.ndarray:
    if x.shape[-1] % QK:
        raise UserError(f"cannot quantize a tensor whose rows ({x.shape[-1]}) are not a multiple of {QK}")
    return x.astype(np.float32).reshape(-1, QK)


def _round_away(v: np.ndarray) -> np.ndarray:
    """C's roundf (half away from zero), which ggml uses; numpy rounds half to even."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def quantize_q8_0(x: np.ndarray) -> bytes:
    """block_q8_0: fp16 d = amax/127, then 32 int8 = round(x/d)."""
    b = _blocks(x)
    d = np.abs(b).max(axis=1) / 127.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    qs = _round_away(b * inv[:, None]).astype(np.int8)
    out = np.empty(len(b), dtype=[("d", "<f2"), ("qs", "i1", QK)])
    out["d"], out["qs"] = d.astype(np.float16), qs
    return out.tobytes()


def _signed_max(b: np.ndarray) -> np.ndarray:
    """Per block, the value of largest magnitude with its sign (the first one on ties, as ggml)."""
    return b[np.arange(len(b)), np.abs(b).argmax(axis=1)]


def quantize_q5_0(x: np.ndarray) -> bytes:
    """block_q5_0: fp16 d = max/-16, 5-bit q = min(31, trunc(x/d + 16.5)); low nibbles of
    elements j and j+16 share byte j, the 32 fifth bits go into a little-endian uint32."""
    b = _blocks(x)
    d = _signed_max(b) / -16.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    q = np.minimum(31, np.trunc(b * inv[:, None] + 16.5)).astype(np.uint32)
    half = QK // 2
    qs = ((q[:, :half] & 0x0F) | ((q[:, half:] & 0x0F) << 4)).astype(np.uint8)
    qh = (((q >> 4) & 1) << np.arange(QK, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    out = np.empty(len(b), dtype=[("d", "<f2"), ("qh", "<u4"), ("qs", "u1", half)])
    out["d"], out["qh"], out["qs"] = d.astype(np.float16), qh, qs
    return out.tobytes()


def quantize_q4_0(x: np.ndarray) -> bytes:
    """block_q4_0: fp16 d = max/-8, 4-bit q = min(15, trunc(x/d + 8.5)), elements j and j+16 in byte j."""
    b = _blocks(x)
    d = _signed_max(b) / -8.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    q = np.minimum(15, np.trunc(b * inv[:, None] + 8.5)).astype(np.uint8)
    half = QK // 2
    out = np.empty(len(b), dtype=[("d", "<f2"), ("qs", "u1", half)])
    out["d"], out["qs"] = d.astype(np.float16), q[:, :half] | (q[:, half:] << 4)
    return out.tobytes()


QUANTIZERS = {"q8_0": quantize_q8_0, "q5_0": quantize_q5_0, "q4_0": quantize_q4_0}


# ---- writing -------------------------------------------------------------------------------


def tensor_type(name: str, shape: tuple[int, ...], ftype: str) -> str:
    """The type whisper.cpp's loader allocates for this tensor in a file of ``ftype``."""
    if ftype == "f32" or len(shape) < 2 or name.endswith(".bias") or name in ALWAYS_F32:
        return "f32"
    if name in CONV_WEIGHTS:
        return "f16"
    return ftype


def _tensor_record(name: str, data: np.ndarray, ftype: str) -> bytes:
    """Header (n_dims, name length, type, dims innermost first, name) followed by the data."""
    if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
        data = data.reshape(-1, 1)
    kind = tensor_type(name, data.shape, ftype)
    if kind == "f32":
        payload = np.ascontiguousarray(data, dtype="<f4").tobytes()
    elif kind == "f16":
        payload = np.ascontiguousarray(data, dtype="<f2").tobytes()
    else:
        payload = QUANTIZERS[kind](data)
    encoded = name.encode("utf-8")
    header = struct.pack("<iii", data.ndim, len(encoded), GGML_TYPE[kind])
    header += struct.pack(f"<{data.ndim}i", *reversed(data.shape)) + encoded
    return header + payload


def _header(hparams: list[int], ftype: str, filters: np.ndarray, tokens: list[bytes]) -> bytes:
    """Magic, hyper-parameters, mel filters and vocabulary: everything before the tensors."""
    file_ftype = FTYPES[ftype] + (GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR if ftype in QUANTIZED else 0)
    parts = [struct.pack("<I", GGML_MAGIC), struct.pack("<11i", *hparams, file_ftype)]
    parts += [struct.pack("<ii", *filters.shape), filters.astype("<f4").tobytes()]
    parts.append(struct.pack("<i", len(tokens)))
    parts += [struct.pack("<i", len(t)) + t for t in tokens]
    return b"".join(parts)


def _n_elements(config: dict) -> int:
    """Rough parameter count, to decide whether the export is long enough for a progress bar."""
    d, layers = config["d_model"], config["encoder_layers"] + config["decoder_layers"]
    return 12 * d * d * layers + config["vocab_size"] * d


def _write(source: Path, out: Path, ftype: str) -> None:
    """Stream the checkpoint into ``out`` (written next to it first, renamed when complete)."""
    from tqdm import tqdm

    config = _read_config(source)
    hparams = _hparams(config)
    tokens = vocab_bytes(source)
    if hparams[0] < len(tokens):
        raise UserError(f"vocab_size {hparams[0]} in config.json is smaller than the tokenizer's {len(tokens)} tokens")
    filters = mel_filters(config["num_mel_bins"])
    n_expected = 11 + 15 * config["encoder_layers"] + 24 * config["decoder_layers"]
    quiet = _n_elements(config) < PROGRESS_MIN_ELEMENTS
    tmp = out.with_name(out.name + ".part")
    written = set()
    with open(tmp, "wb") as f, tqdm(total=n_expected, desc=f"ggml {ftype}", unit="tensor", disable=quiet) as bar:
        f.write(_header(hparams, ftype, filters, tokens))
        for hf_name, data in _iter_tensors(source):
            name = ggml_name(hf_name)
            if name is None or name in written:
                continue
            f.write(_tensor_record(name, data, ftype))
            written.add(name)
            bar.update()
    if len(written) != n_expected:
        tmp.unlink()
        raise UserError(f"{source} has {len(written)} Whisper tensors, whisper.cpp expects {n_expected}")
    tmp.replace(out)


def export_ggml(model_dir: str | Path, out_path: str | Path, ftype: str = "f16", adapter: str | None = None) -> Path:
    """Write ``model_dir`` (or base + ``adapter``, merged first) as a whisper.cpp ggml model file.

    ``ftype``: f16 (whisper.cpp's default), f32, or a ggml quantization (q8_0, q5_0, q4_0).
    """
    if ftype not in FTYPES:
        raise UserError(f"unknown ggml type {ftype!r}: use one of {', '.join(FTYPES)}")
    if ftype == "f32":
        log.warning("whisper.cpp loads f32 files but its CPU encoder aborts on them (issue 2557): f16 runs everywhere")
    out = Path(out_path)
    if out.is_dir():
        out = out / f"ggml-model-{ftype}.bin"
    out.parent.mkdir(parents=True, exist_ok=True)
    from .export import merged_source

    with merged_source(model_dir, adapter, dtype=merge_dtype(ftype)) as source:
        _write(source, out, ftype)
    return out


def merge_dtype(ftype: str) -> str:
    """f32 keeps a merge exact; every other type is at most f16 precision anyway."""
    return "float32" if ftype == "f32" else "float16"


# ---- command line (registered by cli.py as `export-ggml`) -----------------------------------


__all__ = ["export_ggml", "ggml_name", "mel_filters", "quantize_q8_0", "vocab_bytes"]
