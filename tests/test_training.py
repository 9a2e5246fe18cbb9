"""The training loop on the tiny model: metrics, checkpoints, exact resume, faults."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import need_espeak
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


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, small_corpus, tmp_path_factory):
    """The uninterrupted 6-step run (default settings) that resumed runs must equal: trained
    once for the tests that compare with it."""
    return train(_cfg(tiny_model_dir, small_corpus, tmp_path_factory.mktemp("full") / "full"), progress=False)


@pytest.fixture(scope="module")
def stopped_run(tiny_model_dir, small_corpus, tmp_path_factory):
    """``stopped_run(n, out)``: a run with the default settings stopped after step ``n``, copied
    to ``out`` (each ``n`` trained once per module; resuming works in the copy, never the
    original); returns the stopped run's TrainResult."""
    trained = {}

    def stopped(n: int, out: Path):
        if n not in trained:
            folder = tmp_path_factory.mktemp(f"stopped-{n}") / "run"
            trained[n] = folder, train(_cfg(tiny_model_dir, small_corpus, folder), stop_after=n, progress=False)
        folder, result = trained[n]
        shutil.copytree(folder, out)
        return result

    return stopped


def test_int8_run_logs_wer_and_writes_a_complete_run_folder(tiny_model_dir, small_corpus, tmp_path):
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    out = tmp_path / "run"
    cfg = _cfg(
        tiny_model_dir,
        small_corpus,
        out,
        **{
            "model.quantization": "int8",
            "eval.every": 3,
            "eval.base_candidate": "false",
            "model.gradient_checkpointing": "true",
        },
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


def test_stop_and_resume_equals_uninterrupted(tiny_model_dir, small_corpus, tmp_path, full_run, stopped_run):
    full = full_run
    cfg = _cfg(tiny_model_dir, small_corpus, tmp_path / "split")
    first = stopped_run(3, tmp_path / "split")
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


def _exploding(cfg):
    """lr 1e30: a real non-finite loss. A config refuses such a rate (a guard against typos),
    so it is set after validation."""
    cfg.train.learning_rate = 1e30
    return cfg


def test_nan_loss_stops_with_checkpoint_intact(tiny_model_dir, small_corpus, tmp_path):
    cfg = _exploding(
        _cfg(tiny_model_dir, small_corpus, tmp_path / "nan", **{"train.max_grad_norm": 0, "train.warmup_steps": 0})
    )
    with pytest.raises(TrainingStopped, match="loss became .* last good checkpoint"):
        train(cfg, progress=False)
    for ckpt in checkpoint.finished(tmp_path / "nan" / "checkpoints"):
        assert all(torch.isfinite(t).all() for t in _adapter(ckpt).values())
    skip = _exploding(
        _cfg(
            tiny_model_dir,
            small_corpus,
            tmp_path / "skip",
            **{"train.max_grad_norm": 0, "train.warmup_steps": 0, "train.on_nan": "skip"},
        )
    )
    assert train(skip, progress=False).steps == 6


# lr 1e30 from step 2 on (warm-up over 3 steps, the first at lr 0): step 3's loss is the first non-finite one
_BLOWS_UP_AT_3 = {"train.max_grad_norm": 0, "train.warmup_steps": 3}


def test_losses_read_only_when_logging_still_stop_at_the_first_bad_step(tiny_model_dir, small_corpus, tmp_path):
    """Losses and skip flags are read back at log and save points only; the step reported,
    and what is saved, do not depend on how rarely that is."""
    stopped = {}
    for every in (1, 4):
        out = tmp_path / f"log{every}"
        cfg = _exploding(_cfg(tiny_model_dir, small_corpus, out, **_BLOWS_UP_AT_3, **{"train.log_every": every}))
        with pytest.raises(TrainingStopped, match="loss became .* at step") as e:
            train(cfg, progress=False)
        stopped[every] = int(str(e.value).split(" at step ")[1].split(":")[0])
        saved = checkpoint.finished(out / "checkpoints")
        assert saved and all(checkpoint.read_state(c)["step"] < stopped[every] for c in saved)
        assert f"last good checkpoint: {saved[-1]}" in str(e.value)
        for ckpt in saved:
            assert all(torch.isfinite(t).all() for t in _adapter(ckpt).values())
    assert stopped[1] == stopped[4]


def test_skipped_steps_are_named_and_leave_the_logged_loss_finite(tiny_model_dir, small_corpus, tmp_path, caplog):
    out = tmp_path / "skip"
    cfg = _exploding(
        _cfg(tiny_model_dir, small_corpus, out, **_BLOWS_UP_AT_3, **{"train.log_every": 4, "train.on_nan": "skip"})
    )
    with caplog.at_level("WARNING", logger="whisper_tune.training"):
        assert train(cfg, progress=False).steps == 6
    warned = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    skipped = [int(m.split("step ")[1].split(":")[0]) for m in warned]
    assert skipped and skipped == sorted(set(skipped)) and min(skipped) >= 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 6] and all(np.isfinite(r.get("train_loss", 0.0)) for r in records)
    assert all(torch.isfinite(t).all() for t in _adapter(out / "adapter").values())


class _Toy(torch.nn.Module):
    """The model interface OptimizerStep needs, on one linear layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Linear(2, 1)

    def get_encoder(self):
        return self

    def forward(self, input_features, labels, use_cache):
        from types import SimpleNamespace

        return SimpleNamespace(loss=((self.conv1(input_features) - labels) ** 2).mean())


@pytest.mark.parametrize("fused", [True, False], ids=["skipped-on-device", "skipped-on-host"])
def test_a_skipped_step_leaves_no_trace_and_is_read_later(fused):
    """One non-finite micro-batch spoils its whole step: nothing of it reaches the weights or
    AdamW's moments, so training on after it equals never having seen it."""
    from whisper_tune.optimization import OptimizerStep, PendingSteps

    good = {"input_features": torch.ones(2, 2), "labels": torch.zeros(2, 1)}
    bad = {"input_features": torch.full((2, 2), float("nan")), "labels": torch.zeros(2, 1)}

    def trained(*steps):
        model = _Toy()
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused)
        step, pending = OptimizerStep(model, optimizer, None, max_grad_norm=1.0), PendingSteps()
        assert step.skips_on_device == fused
        for i, micro in enumerate(steps, 1):
            pending.add(i, step(iter(micro), len(micro)))
        return model, pending.read()

    reference, _ = trained([good])
    model, read = trained([good, bad], [good])
    assert [(s, skipped) for s, _, skipped in read] == [(1, True), (2, False)]
    assert not np.isfinite(read[0][1]) and np.isfinite(read[1][1])
    assert _same(model.state_dict(), reference.state_dict())


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


def test_one_loader_with_persistent_workers_follows_the_epoch_and_position_it_is_told():
    """The batch sampler is told the epoch and start before each pass: one DataLoader, the
    same worker process throughout, and each pass is exactly epoch_batches' order."""
    from whisper_tune.training import EpochBatches

    durations = np.random.default_rng(0).uniform(1, 10, size=37).astype(np.float32)
    order = EpochBatches(durations, 4, seed=3, group_by_length=True, world=2, rank=1)

    class Keys(torch.utils.data.Dataset):  # each item is the key the sampler asked for
        def __len__(self):
            return 37

        def __getitem__(self, key):
            return key

    loader = torch.utils.data.DataLoader(
        Keys(), batch_sampler=order, num_workers=1, persistent_workers=True, collate_fn=list
    )
    workers = set()
    for epoch, start in ((0, 2), (1, 0), (2, 3)):
        order.set_position(epoch, start)
        expected = epoch_batches(durations, 4, 3, epoch, True, world=2, rank=1)[start:]
        assert list(loader) == [[(epoch, i) for i in batch] for batch in expected]  # keys carry the epoch
        workers |= {w.pid for w in loader._iterator._workers}
    assert len(workers) == 1


def test_out_of_memory_names_the_knobs(tiny_model_dir, small_corpus, tmp_path, monkeypatch):
    import whisper_tune.training as training

    class Exhausted(training.SpeechCollator):
        def __call__(self, examples):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(training, "SpeechCollator", Exhausted)
    with pytest.raises(TrainingStopped, match="lower train.batch_size.*gradient_checkpointing=true.*nf4"):
        train(_cfg(tiny_model_dir, small_corpus, tmp_path / "oom"), progress=False)


def _cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "whisper_tune.cli", "train", *args], capture_output=True, text=True, timeout=timeout
    )


def _one_line(proc, *fragments):
    errors = [line for line in proc.stderr.splitlines() if line.startswith("whisper-tune: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_resume_with_another_batch_size_continues_instead_of_hanging(
    tiny_model_dir, small_corpus, tmp_path, stopped_run
):
    """The saved position (3 of 4 batches of 4) is past the end of an epoch of batches of 8 or 16:
    the resumed run re-derives it in samples and finishes (a hang fails on the timeout)."""
    out = tmp_path / "run"
    stopped_run(3, out)
    for batch in (16, 8):
        args = _overrides(tiny_model_dir, small_corpus, out, **{"train.batch_size": batch})
        proc = _cli(*args, "--resume", "--stop-after", "5" if batch == 16 else "6", timeout=240)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "resuming with train.batch_size: checkpoint" in proc.stderr
    assert json.loads((out / "run.json").read_text())["steps"] == 6 and (out / "adapter").is_dir()


def test_resume_refuses_another_adapter_shape_in_one_line(tiny_model_dir, small_corpus, tmp_path, stopped_run):
    out = tmp_path / "run"
    stopped_run(2, out)
    _one_line(
        _cli(*_overrides(tiny_model_dir, small_corpus, out, **{"lora.r": 8}), "--resume"), "lora.r: checkpoint 4, now 8"
    )


def test_an_adapter_saved_as_a_pickle_is_refused_unopened(tiny_adapter, tmp_path):
    import shutil

    from whisper_tune.modeling import load_for_inference

    folder = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, folder)
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(UserError, match="only adapter_model.bin, a pickle, which whisper-tune does not open"):
        load_for_inference(None, str(folder), torch.device("cpu"))


def test_a_pickle_in_the_run_folder_is_never_loaded(tiny_model_dir, small_corpus, tmp_path, stopped_run):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    stopped_run(2, out)
    crafted = out / "checkpoints" / "step-000009"
    crafted.mkdir()

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"step": 9, "x": Payload()}, crafted / "training_state.pt")
    _one_line(_cli(*_overrides(tiny_model_dir, small_corpus, out), "--resume"), "step-000009", "older whisper-tune")
    assert not marker.exists()


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tiny_model_dir, small_corpus, tmp_path, full_run):
    full = full_run
    out = tmp_path / "run"
    cfg = _cfg(tiny_model_dir, small_corpus, out, **{"train.save_every": 1, "train.keep_last": 3})
    train(cfg, stop_after=4, progress=False)
    latest = checkpoint.latest(out / "checkpoints")
    (latest / checkpoint.TENSORS_FILE).write_bytes(b"\0" * 100)  # a truncated write
    proc = _cli(
        *_overrides(tiny_model_dir, small_corpus, out, **{"train.save_every": 1, "train.keep_last": 3}), "--resume"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{latest}" in proc.stderr and "falling back to" in proc.stderr and "step-000003" in proc.stderr
    assert _same(_adapter(full.adapter_dir), _adapter(out / "adapter"))  # replayed from step 3 exactly


def test_settings_are_refused_before_anything_loads_or_is_written(tiny_model_dir, small_corpus, tmp_path):
    out = tmp_path / "run"
    _one_line(_cli(*_overrides(tiny_model_dir, small_corpus, out, **{"data.language": "xx"})), "unknown language 'xx'")
    _one_line(_cli(*_overrides(tiny_model_dir, tmp_path / "no-corpus", out)), "not found")
    _one_line(_cli(*_overrides(tiny_model_dir, small_corpus, out, **{"train.learning_rate": -1})), "learning_rate")
    _one_line(_cli(*_overrides(tiny_model_dir, small_corpus, out, **{"data.train_split": "nosuch"})), "'nosuch'")
    assert not out.exists()
    out.write_text("a file")
    _one_line(_cli(*_overrides(tiny_model_dir, small_corpus, out)), "is a file")


def test_stale_temporary_folders_are_removed_and_a_full_disk_is_one_line(
    tiny_model_dir, small_corpus, tmp_path, monkeypatch
):
    import errno

    import whisper_tune.training as training

    out = tmp_path / "run"
    (out / "checkpoints" / ".step-000002.tmp999999999").mkdir(parents=True)
    (out / ".best.tmp999999999").mkdir()
    real = checkpoint.write_atomically

    def full_disk(final, fill):
        if final.name == "adapter":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(final, fill)

    monkeypatch.setattr(training.checkpoint, "write_atomically", full_disk)
    with pytest.raises(TrainingStopped, match="disk full while writing .*adapter.*--resume"):
        train(_cfg(tiny_model_dir, small_corpus, out, **{"train.max_steps": 2}), progress=False)
    assert not list(out.glob(".*tmp*")) and not list((out / "checkpoints").glob(".*tmp*"))
    assert not (out / "adapter").exists() and checkpoint.latest(out / "checkpoints") is not None


def test_patience_stops_a_run_that_no_longer_improves_and_keeps_the_best(tiny_model_dir, small_corpus, tmp_path):
    """A learning rate too small to change anything: every evaluation equals the first, so
    after eval.patience of them the run stops, finished, with the best adapter as adapter/."""
    out = tmp_path / "run"
    overrides = {"eval.every": 1, "eval.patience": 2, "train.learning_rate": "1e-12", "eval.max_samples": 2}
    overrides["eval.base_candidate"] = "false"  # the base's own candidate: the test below
    result = train(_cfg(tiny_model_dir, small_corpus, out, **overrides), progress=False)
    assert result.early_stopped_at == 3 and result.steps == 3 and not result.stopped_early
    assert result.best["step"] == 1
    assert _same(_adapter(out / "best"), _adapter(out / "adapter"))
    record = json.loads((out / "run.json").read_text())
    assert record["finished"] and record["early_stopped_at"] == 3
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if "eval_wer" in r] == [1, 2, 3]


def test_the_base_is_a_candidate_and_a_run_that_never_beats_it_says_so(tiny_model_dir, small_corpus, tmp_path, caplog):
    """Step 0 (the untrained adapter: the base itself) is evaluated first. Where no later
    evaluation beats it, best/ is the base, run.json and the log say so in one line, and a
    merge of that adapter warns (issue 24: never worse than the base, without saying so)."""
    from whisper_tune.export import merge
    from whisper_tune.run import BASE_IS_BEST, RunDir

    out = tmp_path / "run"
    overrides = {"eval.every": 2, "train.max_steps": 4, "train.learning_rate": "1e-12", "eval.max_samples": 2}
    with caplog.at_level("WARNING"):
        result = train(_cfg(tiny_model_dir, small_corpus, out, **overrides), progress=False)
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if "eval_wer" in r] == [0, 2, 4]
    assert result.best["step"] == 0 and RunDir(out).best_is_base()
    assert json.loads((out / "run.json").read_text())["best_is_base"] is True
    assert BASE_IS_BEST in caplog.text
    untrained = [v for k, v in _adapter(out / "best").items() if "lora_B" in k]
    assert untrained and all(not v.any() for v in untrained)  # B = 0: the adapter adds nothing
    caplog.clear()
    with caplog.at_level("WARNING"):
        merge(None, str(out / "best"), tmp_path / "merged")
    assert "untrained adapter of step 0" in caplog.text


def test_eval_card_writes_the_report_card_into_the_run_and_beside_its_adapters(
    tiny_model_dir, small_corpus, tmp_path, monkeypatch
):
    """eval.card=true on a CPU: the card of the serving adapter on the eval split, in the run
    folder and beside best/ and adapter/ (where export finds it), its remark saying the base
    stayed best; off by default on a CPU."""
    from whisper_tune import grading
    from whisper_tune.export import model_card
    from whisper_tune.run import BASE_IS_BEST

    need_espeak()
    tiny = grading.CardSize(target=3, nonspeech=2, longform_seconds=6.0, english=2, language_id=2)
    monkeypatch.setattr(grading.CardSize, "for_cpu", classmethod(lambda cls: tiny))
    overrides = {"eval.every": 2, "train.max_steps": 2, "train.learning_rate": "1e-12", "eval.max_samples": 3}
    train(_cfg(tiny_model_dir, small_corpus, tmp_path / "plain", **overrides), progress=False)
    assert not (tmp_path / "plain" / "card.json").exists()  # null: off on a CPU

    out = tmp_path / "run"
    train(_cfg(tiny_model_dir, small_corpus, out, **overrides, **{"eval.card": "true"}), progress=False)
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    assert card["remark"] == BASE_IS_BEST and card["sizes"]["target"] == 2  # the eval split's 2 clips
    assert all(line["base"] == line["tuned"] for line in card["lines"])  # best/ is the base itself
    for folder in ("best", "adapter"):
        assert (out / folder / "card.md").read_bytes() == (out / "card.md").read_bytes()
    assert "## Report card" in model_card("merged", str(tiny_model_dir), "mr", "transcribe", out / "best")


def test_average_last_makes_adapter_the_mean_of_the_last_checkpoints(tiny_model_dir, small_corpus, tmp_path):
    """train.average_last=3: adapter/ holds the mean of the last three checkpoints, which is
    evaluated (a metrics line marked "averaged") as one more candidate for best/."""
    from whisper_tune.averaging import average_weights

    out = tmp_path / "run"
    overrides = {
        "train.max_steps": 4,
        "train.save_every": 1,
        "train.keep_last": 3,
        "train.average_last": 3,
        "eval.every": 2,
        "eval.max_samples": 2,
        "eval.base_candidate": "false",
    }
    train(_cfg(tiny_model_dir, small_corpus, out, **overrides), progress=False)
    kept = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in kept] == ["step-000002", "step-000003", "step-000004"]
    mean, final = average_weights(kept), _adapter(out / "adapter")
    assert mean.keys() == final.keys() and all(torch.equal(mean[k], final[k]) for k in mean)
    assert not all(torch.equal(final[k], v) for k, v in _adapter(kept[-1]).items())  # not the last step's
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    averaged = [r for r in lines if r.get("averaged")]
    assert len(averaged) == 1 and averaged[0]["step"] == 4 and "eval_wer" in averaged[0]
    record = json.loads((out / "adapter" / "averaged.json").read_text())  # as `whisper-tune average` writes
    assert record["averaged"] == [str(p) for p in kept]


def _refused(capsys, argv, says):
    from whisper_tune.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("whisper-tune: error:") and says in err[0], err


def test_config_holes_are_refused_before_the_model_loads(tiny_model_dir, small_corpus, tmp_path, capsys, monkeypatch):
    """Issue 29 item 6: each is one line, exit 2, with nothing loaded or written."""
    import whisper_tune.training as training

    monkeypatch.setattr(training, "lora_model", lambda *a, **k: pytest.fail("the model loaded"))
    out = tmp_path / "run"

    def argv(**extra):
        return ["train", *_overrides(tiny_model_dir, small_corpus, out, **extra)]

    _refused(capsys, argv(**{"train.compile": "true"}), "train.compile=true compiles for CUDA GPUs")
    _refused(capsys, argv(**{"lora.r": 65}), "lora.r = 65 is above the base's layer width (64)")
    _refused(capsys, argv(**{"augment.noise_dir": tmp_path / "no-noise"}), "augment.noise_dir")
    _refused(capsys, argv(**{"train.learning_rate": "1e300"}), "is absurd")
    _refused(capsys, argv(**{"lora.targets": "[]"}), "lora.targets is empty")
    for name, change, says in (
        ("bert", {"model_type": "bert"}, "holds a 'bert' model, not a Whisper"),
        ("negative", {"d_model": -64}, "d_model = -64"),
    ):
        base = tmp_path / name
        shutil.copytree(tiny_model_dir, base)
        config = json.loads((base / "config.json").read_text())
        (base / "config.json").write_text(json.dumps(config | change))
        _refused(capsys, argv(**{"model.base": base}), says)
    assert not out.exists()


def test_workers_are_capped_to_the_cores_and_die_with_the_parent(tiny_model_dir, small_corpus, tmp_path, caplog):
    from whisper_tune.training import TrainingRun, _die_with_parent

    cfg = _cfg(tiny_model_dir, small_corpus, tmp_path / "run", **{"train.num_workers": 1000, "train.max_steps": 1})
    run = TrainingRun(cfg, progress=False)
    run.setup()
    with caplog.at_level(logging.WARNING, logger="whisper_tune.training"):
        loader = run._loader()
    assert loader.num_workers == (os.cpu_count() or 1) and loader.worker_init_fn is _die_with_parent
    assert any("capped" in m for m in caplog.messages)
