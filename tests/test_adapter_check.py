"""Crafted or damaged adapter folders (issue 29 item 4): one line, exit 2, nothing written."""

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from whisper_tune.adapter_check import check_adapter, read_header
from whisper_tune.cli import main
from whisper_tune.errors import UserError

WEIGHTS = "adapter_model.safetensors"


def _edit_json(folder, name, **changes):
    path = folder / name
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def _edit_tensors(folder, change):
    tensors = load_file(str(folder / WEIGHTS))
    save_file(change(tensors), str(folder / WEIGHTS))


def _nan(tensors):
    name = sorted(tensors)[0]
    tensors[name][0, 0] = float("nan")
    return tensors


def _header_bytes(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


CRAFTS = {
    "r 0": (lambda f: _edit_json(f, "adapter_config.json", r=0), "r must be a whole number"),
    "unknown targets": (lambda f: _edit_json(f, "adapter_config.json", target_modules=["conv9"]), "'conv9'"),
    "prefix tuning": (lambda f: _edit_json(f, "adapter_config.json", peft_type="PREFIX_TUNING"), "LoRA adapters only"),
    "invalid JSON": (lambda f: (f / "adapter_config.json").write_text("{r: 4,"), "not valid JSON"),
    "modules_to_save": (lambda f: _edit_json(f, "adapter_config.json", modules_to_save=["proj_out"]), "modules_to"),
    "non-UTF-8 record": (lambda f: (f / "whisper_tune.json").write_bytes(b'{"base": "\xff\xfe"}'), "not UTF-8"),
    "NaN alpha": (lambda f: (f / "adapter_config.json").write_text(
        (f / "adapter_config.json").read_text().replace('"lora_alpha": 8', '"lora_alpha": NaN')
    ), "lora_alpha"),
    "rank mismatch": (lambda f: _edit_json(f, "adapter_config.json", r=8), "rank 4"),
    "pattern rank mismatch": (
        lambda f: _edit_json(f, "adapter_config.json", rank_pattern={r"decoder\..*": 2}), "says r = 2"
    ),
    "bad rank pattern": (lambda f: _edit_json(f, "adapter_config.json", rank_pattern={"(": 2}), "rank_pattern"),
    "NaN tensor": (lambda f: _edit_tensors(f, _nan), "NaN or infinite"),
    "renamed keys": (
        lambda f: _edit_tensors(f, lambda t: {k.replace("lora_A", "lora_X"): v for k, v in t.items()}),
        "match no LoRA layer",
    ),
    "empty safetensors": (lambda f: _edit_tensors(f, lambda t: {}), "no tensors"),
    "bogus quantization": (lambda f: _edit_json(f, "whisper_tune.json", quantization="int3"), "quantization"),
    "bogus task": (lambda f: _edit_json(f, "whisper_tune.json", task="summarize"), "task must be"),
    "header of 2**62": (lambda f: (f / WEIGHTS).write_bytes(struct.pack("<Q", 2**62) + b"{}"), "header claims"),
    "shape 1e9 x 1e9": (
        lambda f: (f / WEIGHTS).write_bytes(
            _header_bytes(
                {"base_model.model.model.encoder.layers.0.fc1.lora_A.weight": {
                    "dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 16]
                }},
                b"\0" * 16,
            )
        ),
        "does not fit",
    ),
}  # fmt: skip


@pytest.fixture()
def adapter_copy(tiny_adapter, tmp_path):
    out = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, out)
    return out


def test_the_fixture_adapter_passes(tiny_adapter, tiny_model_dir):
    check_adapter(tiny_adapter)
    check_adapter(tiny_adapter, str(tiny_model_dir))


@pytest.mark.parametrize("craft", list(CRAFTS))
def test_a_crafted_adapter_is_one_line(craft, adapter_copy):
    change, says = CRAFTS[craft]
    change(adapter_copy)
    with pytest.raises(UserError, match=says) as info:
        check_adapter(adapter_copy)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("craft", ["r 0", "NaN tensor", "renamed keys", "header of 2**62", "bogus task"])
def test_merge_refuses_in_one_line_and_writes_nothing(craft, adapter_copy, tmp_path, capsys):
    CRAFTS[craft][0](adapter_copy)
    out = tmp_path / "merged"
    assert main(["merge", "--adapter", str(adapter_copy), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("whisper-tune: error: adapter") and CRAFTS[craft][1] in err[0]
    assert not out.exists()


def test_several_problems_are_listed_together(adapter_copy):
    _edit_json(adapter_copy, "adapter_config.json", r=0, peft_type="IA3")
    _edit_json(adapter_copy, "whisper_tune.json", task="x")
    with pytest.raises(UserError) as info:
        check_adapter(adapter_copy)
    assert str(info.value).count(";") >= 2


def test_layers_the_base_does_not_have_are_found_with_the_base(adapter_copy, tiny_model_dir):
    def rename(tensors):
        return {k.replace("layers.0.", "layers.7."): v for k, v in tensors.items()}

    _edit_tensors(adapter_copy, rename)
    (adapter_copy / "whisper_tune.json").unlink()  # no record of the base: layer 7 may exist
    check_adapter(adapter_copy)
    with pytest.raises(UserError, match="16 of 32 tensors match no LoRA layer"):  # the tiny base has 2 layers
        check_adapter(adapter_copy, str(tiny_model_dir))


def test_the_header_is_read_without_loading(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(2, 3)}, str(path))
    assert read_header(path)["a"]["shape"] == [2, 3]
    path.write_bytes(path.read_bytes()[:-4])  # truncated data
    with pytest.raises(ValueError, match="does not fit"):
        read_header(path)


def test_an_adapter_with_a_smaller_decoder_rank_passes(tiny_model_dir, tmp_path):
    """lora.decoder_r writes PEFT's rank_pattern/alpha_pattern: a sound adapter of that kind
    loads, and its decoder tensors are checked against the pattern's rank."""
    from whisper_tune.config import LoraSettings, ModelConfig
    from whisper_tune.modeling import lora_model
    from whisper_tune.run import write_adapter_meta

    cfg = ModelConfig(base=str(tiny_model_dir), quantization="none", gradient_checkpointing=False)
    model = lora_model(cfg, LoraSettings(r=4, alpha=8, targets="qv", decoder_r=2), torch.device("cpu"))
    model.save_pretrained(tmp_path)
    write_adapter_meta(tmp_path, cfg, "mr", "transcribe")
    check_adapter(tmp_path, str(tiny_model_dir))
    _edit_json(tmp_path, "adapter_config.json", rank_pattern={})
    with pytest.raises(UserError, match="says r = 4"):
        check_adapter(tmp_path, str(tiny_model_dir))
