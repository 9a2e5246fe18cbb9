"""The training loop on the tiny model: metrics, checkpoints, exact resume, faults."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from whisper_tune import checkpoint
from whisper_tune.config import load_train_config
from whisper_tune.errors import UserError
from whisper_tune.training import TrainingStopped, epoch_batches, train


def _overrides(model_dir, source, out, **extra):
    base = {
        "model.base": model_dir,
        "model.quantization": "none",
        "model.gradient_checkpointing": "false",
        "data.source": source,
        "data.train_split": "train",
        "data.eval_split": "test",
        "train.output_dir": out,
        "train.batch_size": 4,
        "train.max_steps": 6,
        "train.num_workers": 0,
        "train.log_every": 1,
        "train.save_every": 2,
        "train.keep_last": 2,
        "train.warmup_steps": 1,
        "train.learning_rate": "1e-3",
        "eval.every": -1,
        "eval.max_new_tokens": 4,
        "lora.r": 4,
        "lora.alpha": 8,
        "lora.dropout": 0.1,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _cfg(*args, **kw):
    return load_train_config(None, _overrides(*args, **kw))


def _adapter(path: Path) -> dict:
    return load_file(str(path / "adapter_model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_int8_run_logs_wer_and_writes_a_complete_run_folder(tiny_model_dir, small_corpus, tmp_path):
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    out = tmp_path / "run"
    cfg = _cfg(
        tiny_model_dir,
        small_corpus,
        out,
        **{"model.quantization": "int8", "eval.every": 3, "model.gradient_checkpointing": "true"},
    )
    result = train(cfg, progress=False)
    assert result.steps == 6 and not result.stopped_early
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_wer" in r]
    assert [r["step"] for r in evals] == [3, 6] and all(r["eval_wer"] >= 0 and r["eval_cer"] >= 0 for r in evals)
    assert [r["step"] for r in records if "train_loss" in r] == [1, 2, 3, 4, 5, 6]
    assert result.best["step"] in (3, 6) and (out / "best" / "eval.json").exists()
    assert [p.name for p in checkpoint.finished(out / "checkpoints")] == ["step-000004", "step-000006"]
    assert not list((out / "checkpoints").glob(".*"))  # no temporary folders left
    run = json.loads((out / "run.json").read_text())
    assert run["quantization"] == "int8" and run["finished"] and run["samples_per_s"] > 0
    assert run["environment"]["versions"]["bitsandbytes"] and "peak_rss_gib" in run
    assert (out / "training.png").stat().st_size > 1000 and list((out / "tensorboard").iterdir())
    # The final adapter loads with plain PEFT onto the base.
    base = WhisperForConditionalGeneration.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, out / "adapter")
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_stop_and_resume_equals_uninterrupted(tiny_model_dir, small_corpus, tmp_path):
    full = train(_cfg(tiny_model_dir, small_corpus, tmp_path / "full"), progress=False)
    cfg = _cfg(tiny_model_dir, small_corpus, tmp_path / "split")
    first = train(cfg, stop_after=3, progress=False)
    assert first.stopped_early and first.steps == 3 and not (tmp_path / "split" / "adapter").exists()
    with pytest.raises(UserError, match="--resume"):
        train(cfg, progress=False)
    resumed = train(cfg, resume=True, progress=False)
    assert resumed.steps == 6
    assert _same(_adapter(full.adapter_dir), _adapter(resumed.adapter_dir))
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # nothing logged twice


def test_sigkill_mid_run_then_resume(tiny_model_dir, small_corpus, tmp_path):
    reference = train(_cfg(tiny_model_dir, small_corpus, tmp_path / "ref", **{"train.max_steps": 8}), progress=False)
    out = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "whisper_tune.cli",
        "train",
        *_overrides(tiny_model_dir, small_corpus, out, **{"train.max_steps": 8, "train.save_every": 1}),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(checkpoint.finished(out / "checkpoints")) < 1 and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # land somewhere inside the next steps, possibly mid-write
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = checkpoint.finished(out / "checkpoints")
    assert done and not (out / "adapter").exists()
    for ckpt in done:  # every folder that looks finished loads whole (read_state checks every file)
        assert checkpoint.read_state(ckpt)["step"] >= 1
    resume = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resume.returncode == 0, resume.stderr[-2000:]
    assert _same(_adapter(reference.adapter_dir), _adapter(out / "adapter"))


def test_nan_loss_stops_with_checkpoint_intact(tiny_model_dir, small_corpus, tmp_path):
    cfg = _cfg(
        tiny_model_dir,
        small_corpus,
        tmp_path / "nan",
        **{"train.learning_rate": "1e30", "train.max_grad_norm": 0, "train.warmup_steps": 0},
    )
    with pytest.raises(TrainingStopped, match="loss became .* last good checkpoint"):
        train(cfg, progress=False)
    for ckpt in checkpoint.finished(tmp_path / "nan" / "checkpoints"):
        assert all(torch.isfinite(t).all() for t in _adapter(ckpt).values())
    skip = _cfg(
        tiny_model_dir,
        small_corpus,
        tmp_path / "skip",
        **{"train.learning_rate": "1e30", "train.max_grad_norm": 0, "train.warmup_steps": 0, "train.on_nan": "skip"},
    )
    assert train(skip, progress=False).steps == 6


def test_bad_model_or_key_exits_2(tmp_path, small_corpus):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "whisper_tune.cli",
            "train",
            f"model.base={tmp_path}/none",
            f"data.source={small_corpus}",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "whisper_tune.cli", "train", "lora.rank=4"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "lora.rank: unknown key" in proc.stderr


def test_epoch_batches_are_deterministic_and_sharded():
    durations = np.random.default_rng(0).uniform(1, 10, size=103).astype(np.float32)
    a = epoch_batches(durations, 8, seed=1, epoch=0, group_by_length=True)
    assert a == epoch_batches(durations, 8, seed=1, epoch=0, group_by_length=True)
    assert a != epoch_batches(durations, 8, seed=1, epoch=1, group_by_length=True)
    assert sorted(i for b in a for i in b) == list(range(103))
    r0 = epoch_batches(durations, 8, 1, 0, True, world=2, rank=0)
    r1 = epoch_batches(durations, 8, 1, 0, True, world=2, rank=1)
    assert len(r0) == len(r1) and not {i for b in r0 for i in b} & {i for b in r1 for i in b}


def test_out_of_memory_names_the_knobs(tiny_model_dir, small_corpus, tmp_path, monkeypatch):
    import whisper_tune.training as training

    class Exhausted(training.SpeechCollator):
        def __call__(self, examples):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(training, "SpeechCollator", Exhausted)
    with pytest.raises(TrainingStopped, match="lower train.batch_size.*gradient_checkpointing=true.*nf4"):
        train(_cfg(tiny_model_dir, small_corpus, tmp_path / "oom"), progress=False)
