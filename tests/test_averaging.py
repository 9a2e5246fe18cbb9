"""Checkpoint averaging: the averaged adapter is the element-wise mean, loads like any
adapter, finds its processor and record when made from checkpoints, and adapters that do
not belong together are refused in one line."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from whisper_tune.averaging import WEIGHTS, average_adapters, average_weights
from whisper_tune.errors import UserError


def _scaled(adapter, out, factor):
    shutil.copytree(adapter, out)
    weights = load_file(str(out / WEIGHTS))
    save_file({k: v * factor for k, v in weights.items()}, str(out / WEIGHTS))
    return out


def test_the_average_is_the_elementwise_mean_and_loads(tiny_adapter, tiny_model_dir, tmp_path):
    from whisper_tune.inference import open_engine
    from whisper_tune.inference.options import DecodingOptions

    a, b = _scaled(tiny_adapter, tmp_path / "a", 1.0), _scaled(tiny_adapter, tmp_path / "b", 3.0)
    out = average_adapters([a, b], tmp_path / "avg")
    mean, first = load_file(str(out / WEIGHTS)), load_file(str(a / WEIGHTS))
    assert mean.keys() == first.keys()
    assert all(torch.allclose(mean[k], 2.0 * first[k]) for k in first)  # (1x + 3x) / 2
    assert (out / "whisper_tune.json").is_file() and (out / "adapter_config.json").is_file()
    assert json.loads((out / "averaged.json").read_text())["averaged"] == [str(a), str(b)]
    engine = open_engine(None, str(out), device=torch.device("cpu"), decoding=DecodingOptions.greedy())
    assert engine.decode_clips([torch.zeros(16000).numpy()], "mr", "transcribe", 4) is not None


def test_checkpoints_take_the_processor_and_record_of_their_run(tiny_adapter, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_adapter, run / "best")
    for step in (1, 2):
        folder = run / "checkpoints" / f"step-{step:06d}"
        folder.mkdir(parents=True)
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copy(tiny_adapter / name, folder / name)
        (folder / "training_state.json").write_text("{}")
    out = average_adapters(sorted((run / "checkpoints").iterdir()), tmp_path / "avg")
    assert (out / "whisper_tune.json").read_bytes() == (tiny_adapter / "whisper_tune.json").read_bytes()
    assert not (out / "training_state.json").exists()


def test_adapters_that_do_not_belong_together_are_refused(tiny_adapter, tmp_path):
    a = _scaled(tiny_adapter, tmp_path / "a", 1.0)
    other = _scaled(tiny_adapter, tmp_path / "other", 1.0)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps(config | {"r": 8}))
    with pytest.raises(UserError, match="other LoRA settings"):
        average_weights([a, other])
    fewer = _scaled(tiny_adapter, tmp_path / "fewer", 1.0)
    weights = load_file(str(fewer / WEIGHTS))
    save_file(dict(list(weights.items())[1:]), str(fewer / WEIGHTS))
    with pytest.raises(UserError, match="other tensors"):
        average_weights([a, fewer])
    bad = _scaled(tiny_adapter, tmp_path / "nan", float("nan"))
    with pytest.raises(UserError, match="NaN"):
        average_weights([a, bad])
    with pytest.raises(UserError, match="at least two"):
        average_weights([a])
    with pytest.raises(UserError, match="not an adapter folder"):
        average_adapters([a, tmp_path], tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_the_cli_averages_and_refuses_in_one_line(tiny_adapter, tmp_path, capsys):
    from whisper_tune.cli import main

    a, b = _scaled(tiny_adapter, tmp_path / "a", 1.0), _scaled(tiny_adapter, tmp_path / "b", 2.0)
    assert main(["average", str(a), str(b), "--out", str(tmp_path / "avg")]) == 0
    assert "averaged 2 adapters" in capsys.readouterr().out
    assert main(["average", str(a), "--out", str(tmp_path / "one")]) == 2
    assert "at least two" in capsys.readouterr().err
