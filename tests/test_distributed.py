"""Data-parallel training with two processes on the CPU (gloo): what torchrun or
`accelerate launch` does on several GPUs, minus the GPUs."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import free_port
from test_training import _overrides

from whisper_tune import checkpoint
from whisper_tune.config import load_train_config
from whisper_tune.training import train


def _torchrun(overrides: list[str], *flags: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(free_port()), "-m", "whisper_tune.cli", "train", *flags, *overrides]
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


SETTINGS = {"train.batch_size": 2, "train.max_steps": 4}


@pytest.fixture(scope="module")
def two_ranks_stopped(tiny_model_dir, small_corpus, tmp_path_factory):
    """A two-process run stopped after step 2, launched once; the tests resume copies of it."""
    out = tmp_path_factory.mktemp("two-ranks") / "run"
    first = _torchrun(_overrides(tiny_model_dir, small_corpus, out, **SETTINGS), "--stop-after", "2")
    return out, first


def _copy(stopped, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    return out


def test_two_gloo_ranks_shard_the_data_write_once_and_resume(tiny_model_dir, small_corpus, tmp_path, two_ranks_stopped):
    stopped, first = two_ranks_stopped
    assert first.returncode == 0, first.stderr[-3000:]
    # each rank announces its own share of the batches
    assert "rank 0 of 2" in first.stderr and "rank 1 of 2" in first.stderr
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == ["step-000002"]
    out = _copy(stopped, tmp_path)
    overrides = _overrides(tiny_model_dir, small_corpus, out, **SETTINGS)
    second = _torchrun(overrides, "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train_loss" in r] == [1, 2, 3, 4]  # one writer, no step twice
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["steps"] == 4
    assert run["steady_samples_per_s"] > 0 and len(run["peak_rss_gib_per_rank"]) == 2  # what the benchmark reads
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_a_two_process_run_resumes_in_one_process_at_the_next_unseen_batch(
    tiny_model_dir, small_corpus, tmp_path, caplog, two_ranks_stopped
):
    """Rank r of 2 trains batches r, r+2, ... of the epoch's order, one process trains them
    all in that order: 2 steps of 2 ranks are batches 0-3, so the one process goes on at
    batch 4, none skipped and none trained twice."""
    stopped, first = two_ranks_stopped
    assert first.returncode == 0, first.stderr[-3000:]
    out = _copy(stopped, tmp_path)
    overrides = _overrides(tiny_model_dir, small_corpus, out, **SETTINGS)
    assert checkpoint.read_state(out / "checkpoints" / "step-000002")["micro_done"] == 2  # per rank
    with caplog.at_level("WARNING", logger="whisper_tune.training"):
        result = train(load_train_config(None, overrides), resume=True, progress=False)
    assert "train.world_size: checkpoint 2, now 1" in caplog.text
    assert result.steps == 4 and not result.stopped_early
    state = checkpoint.read_state(out / "checkpoints" / "step-000004")
    assert (state["epoch"], state["micro_done"]) == (0, 6) and state["run"]["train"]["world_size"] == 1
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 1 and run["resumed_from"].endswith("step-000002")
