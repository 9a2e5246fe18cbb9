"""Reliability probe for issue 13: kills, bad configurations, resume hangs, pickles.

    PYTHONPATH=src python benchmarks/reliability_probe.py            # everything, ~20 min on 2 cores
    PYTHONPATH=src python benchmarks/reliability_probe.py --kills 5 --sections kills,pickles

Everything runs through the CLI (``python -m whisper_tune.cli``) in subprocesses, on a tiny
random Whisper (``architecture_config("tiny-test")``, the real vocabulary, the bundled
processor) and a 20-sentence espeak-ng demo corpus, built in a temporary folder the way
tests/conftest.py builds its fixtures. The fast run is tests/test_training.py's: no
quantization, batch 4, 8 steps, a checkpoint every step, no evaluation, LoRA r 4.

One question per section:

1. kills -- Is every SIGKILL survived, with the same adapter as an uninterrupted run?
   One uninterrupted reference run (and a second one, to show the runs are deterministic).
   Then ``--kills`` runs: ``train`` is started, and once its first checkpoint exists the
   process group gets SIGKILL, either at a random moment (seeded by ``--seed``) or while a
   checkpoint is being written (a ``checkpoints/.step-*.tmp*`` folder exists; "mid-write" is
   counted when that temporary folder is still there after the kill). Every checkpoint that
   looks finished after a kill must read whole. With probability ``--rekill`` the resumed run
   is killed again; the last ``--resume`` runs to the end. The final
   ``adapter/adapter_model.safetensors`` is compared with the reference (max |difference|),
   and the metrics log must hold steps 1..8 once each with the reference's losses.
2. configs -- Is every bad ``train`` invocation one line and exit 2 before anything loads?
   Each one runs with a fresh ``train.output_dir`` and is classified (a) exit 2, exactly one
   ``whisper-tune: error:`` line, no traceback, nothing written in the output folder and no
   "Loading weights" in stderr; (b) the same one line, but after loading or writing;
   (c) a traceback, another exit code or a timeout; (d) accepted (exit 0).
3. hangs -- Does a resume with another batch size or accumulation finish? A run stopped at
   step 3 (batch 4) is resumed with a larger and a smaller ``train.batch_size`` and with
   ``train.grad_accum`` changed, each under a 300 s timeout.
4. pickles -- Is any pickle in a run folder ever unpickled? (i) src/ is searched for
   ``torch.load``, ``pickle.load(s)``, ``weights_only=False`` and ``np.load(..allow_pickle``.
   (ii) Crafted pickles whose ``__reduce__`` creates a marker file are planted as
   ``training_state.pt`` in a checkpoint folder (alone, as an older version's checkpoint; and
   beside a current checkpoint's files, with HF-Trainer-style ``optimizer.pt``,
   ``scheduler.pt``, ``rng_state.pth``), and as ``adapter_model.bin`` in an adapter folder
   whose safetensors file was removed; then ``train --resume``, ``evaluate --adapter`` and
   ``merge --adapter`` run on them. A control unpickles one payload with
   ``torch.load(weights_only=False)`` in a subprocess to show the payload is live.

Writes ``probe.json`` (every run's details) and ``probe.md`` (figures and the exact command)
to ``--out`` (default benchmarks/results/reliability) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("kills", "configs", "hangs", "pickles", "round3")
STEPS = 8
TEMP_STEP = re.compile(r"^\.step-\d+\.tmp\d+$")
TEMP_ANY = re.compile(r"^\..+\.(tmp|old)\d+$")
ERROR_PREFIX = "whisper-tune: error:"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---- plumbing --------------------------------------------------------------------------------


class Work:
    """The temporary folder, the fixtures in it, and how to call the CLI."""

    def __init__(self, root: Path):
        import whisper_tune

        self.root = root
        self.model = root / "tiny-whisper"
        self.corpus: Path | None = None
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env["WHISPER_TUNE_CACHE"] = str(root / "cache")
        package_root = str(Path(whisper_tune.__file__).resolve().parents[1])
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        os.environ["WHISPER_TUNE_CACHE"] = self.env["WHISPER_TUNE_CACHE"]
        self.n = 0

    def build(self) -> None:
        """The tiny model folder and the demo corpus, as tests/conftest.py makes them."""
        import torch
        from transformers import WhisperForConditionalGeneration

        from whisper_tune.demo_data import DemoDataOptions, make_demo_data
        from whisper_tune.modeling import architecture_config
        from whisper_tune.processor import build_processor

        torch.manual_seed(0)
        model = WhisperForConditionalGeneration(architecture_config("tiny-test")).eval()
        torch.manual_seed(1)
        model.model.decoder.embed_tokens.weight.data.normal_(0, 0.5)  # as conftest's tiny_model_dir
        model.save_pretrained(self.model)
        build_processor(self.model)
        options = DemoDataOptions(sentences=20, train_repeats=1)
        self.corpus = make_demo_data(self.root / "corpus", "mr", options, progress=False).folder

    def overrides(self, out: Path, **extra) -> list[str]:
        """tests/test_training.py's fast run, 8 steps with a checkpoint every step."""
        base = {
            "model.base": self.model,
            "model.quantization": "none",
            "model.gradient_checkpointing": "false",
            "data.source": self.corpus,
            "data.train_split": "train",
            "data.eval_split": "test",
            "train.output_dir": out,
            "train.batch_size": 4,
            "train.max_steps": STEPS,
            "train.num_workers": 0,
            "train.log_every": 1,
            "train.save_every": 1,
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

    def cli(self, *args) -> list[str]:
        return [sys.executable, "-m", "whisper_tune.cli", *map(str, args)]

    def start(self, args: list[str], label: str) -> tuple[subprocess.Popen, Path]:
        """A CLI process in its own process group, stderr to a log file."""
        self.n += 1
        log = self.logs / f"{self.n:03d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)[:60]}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=self.env,
                cwd=self.root,
                start_new_session=True,
            )
        return proc, log

    def run(self, args: list[str], label: str, timeout: float) -> dict:
        """Run to the end (or the timeout: SIGKILL to the group); rc, seconds, stderr."""
        t0 = time.perf_counter()
        proc, log = self.start(args, label)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc)
            proc.wait()
        return {
            "rc": proc.returncode,
            "timed_out": timed_out,
            "seconds": round(time.perf_counter() - t0, 2),
            "stderr": log.read_text(encoding="utf-8", errors="replace"),
            "log": str(log),
        }


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stderr_lines(text: str) -> list[str]:
    """stderr split on newlines and tqdm's carriage returns."""
    return [line for line in re.split(r"[\r\n]+", text) if line.strip()]


def error_lines(text: str) -> list[str]:
    return [line for line in stderr_lines(text) if line.startswith(ERROR_PREFIX)]


def tail(text: str, n: int = 25) -> str:
    return "\n".join(stderr_lines(text)[-n:])


def snapshot(path: Path):
    """What is at ``path``: None, a file's (size, mtime) or a folder's files with theirs."""
    if not path.exists():
        return None
    if path.is_file():
        st = path.stat()
        return ("file", st.st_size, st.st_mtime_ns)
    return sorted(
        (str(p.relative_to(path)), p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
        for p in path.rglob("*")
    )


def temp_folders(*folders: Path) -> list[str]:
    found = []
    for folder in folders:
        if folder.is_dir():
            found += [str(folder / name) for name in os.listdir(folder) if TEMP_ANY.match(name)]
    return found


def adapter_difference(a: Path, b: Path) -> float | None:
    """Max |a - b| over every tensor of two adapter files (None when the keys or shapes differ)."""
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    if ta.keys() != tb.keys() or any(ta[k].shape != tb[k].shape for k in ta):
        return None
    return max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta) if ta else 0.0


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]


def run_finished(run_dir: Path) -> bool:
    record = run_dir / "run.json"
    try:
        steps = json.loads(record.read_text(encoding="utf-8")).get("steps")
    except (OSError, ValueError):
        return False
    return steps == STEPS and (run_dir / "adapter" / "adapter_model.safetensors").is_file()


# ---- 1. kills --------------------------------------------------------------------------------


def timed_reference(work: Work, out: Path) -> dict:
    """An uninterrupted run, timing when its first checkpoint appears and when it ends."""
    from whisper_tune import checkpoint

    t0 = time.perf_counter()
    proc, log = work.start(work.cli("train", *work.overrides(out)), f"reference-{out.name}")
    first = None
    while proc.poll() is None:
        if first is None and checkpoint.finished(out / "checkpoints"):
            first = time.perf_counter() - t0
        time.sleep(0.02)
    total = time.perf_counter() - t0
    stderr = log.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0 or not run_finished(out):
        raise SystemExit(f"reference run failed (rc {proc.returncode}):\n{tail(stderr)}")
    return {"first_checkpoint_s": round(first or total, 2), "total_s": round(total, 2), "log": str(log)}


def kill_once(work: Work, args: list[str], out: Path, label: str, plan: dict) -> dict:
    """Start ``args``; SIGKILL the group as ``plan`` says; what the kill left."""
    from whisper_tune import checkpoint

    ckpts = out / "checkpoints"
    t0 = time.perf_counter()
    before = {p.name for p in checkpoint.finished(ckpts)}
    proc, log = work.start(args, label)
    event = {"label": label, "mode": plan["mode"]}
    if plan["mode"] == "random":
        if plan["after_first_checkpoint"]:  # the first run: wait for a checkpoint to resume from
            while proc.poll() is None and not checkpoint.finished(ckpts):
                time.sleep(0.005)
        deadline = time.perf_counter() + plan["delay_s"]
        while proc.poll() is None and time.perf_counter() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            kill_group(proc)
    else:  # mid-write: the n-th checkpoint write that starts after a finished checkpoint exists
        seen: set[str] = set()
        ready = not plan["after_first_checkpoint"] or bool(before)
        while proc.poll() is None:
            if not ready:
                ready = bool(checkpoint.finished(ckpts))
                time.sleep(0.002)
                continue
            try:
                names = os.listdir(ckpts)
            except FileNotFoundError:
                names = []
            fresh = [n for n in names if TEMP_STEP.match(n) and n not in seen]
            if fresh:
                if len(seen) >= plan["skip_writes"]:
                    kill_group(proc)
                    event["targeted"] = fresh[0]
                    break
                seen.update(fresh)
            time.sleep(0.0002)
    proc.wait()
    event["seconds"] = round(time.perf_counter() - t0, 2)
    event["rc"] = proc.returncode
    event["killed"] = proc.returncode == -signal.SIGKILL
    stderr = log.read_text(encoding="utf-8", errors="replace")
    event["traceback"] = tail(stderr) if "Traceback" in stderr else None
    if not event["killed"]:
        event["stderr_tail"] = tail(stderr, 8)
    left = [n for n in os.listdir(ckpts) if TEMP_STEP.match(n)] if ckpts.is_dir() else []
    event["mid_write"] = event["killed"] and bool(left)
    event["temp_left"] = left
    done = checkpoint.finished(ckpts)
    event["finished_checkpoints"] = [p.name for p in done]
    unreadable = []
    for ckpt in done:
        try:
            checkpoint.read_state(ckpt)
        except Exception as e:  # noqa: BLE001 -- reported, not raised
            unreadable.append(f"{ckpt.name}: {type(e).__name__}: {e}")
    event["unreadable_checkpoints"] = unreadable
    return event


def section_kills(work: Work, n_runs: int, seed: int, rekill: float, mid_write_share: float) -> dict:
    rng = random.Random(seed)
    ref_dir = work.root / "kills" / "reference"
    timing = timed_reference(work, ref_dir)
    repeat_dir = work.root / "kills" / "reference-repeat"
    timed_reference(work, repeat_dir)
    ref_adapter = ref_dir / "adapter" / "adapter_model.safetensors"
    repeat_diff = adapter_difference(ref_adapter, repeat_dir / "adapter" / "adapter_model.safetensors")
    ref_losses = train_losses(ref_dir)
    step_s = max((timing["total_s"] - timing["first_checkpoint_s"]) / (STEPS - 1), 0.2)
    startup_s = max(timing["first_checkpoint_s"] - step_s, 1.0)
    print(f"kills: reference {timing['total_s']} s, first checkpoint at {timing['first_checkpoint_s']} s", flush=True)

    runs = []
    for i in range(n_runs):
        out = work.root / "kills" / f"run-{i:02d}"
        args = work.cli("train", *work.overrides(out))
        events = []
        first_plan = {"after_first_checkpoint": True}
        if rng.random() < mid_write_share:
            first_plan.update(mode="mid-write", skip_writes=rng.randrange(0, 5))
        else:  # anywhere in the rest of the run, not so late that it ends first
            first_plan.update(mode="random", delay_s=round(rng.uniform(0, 0.85 * step_s * (STEPS - 1)), 3))
        events.append(kill_once(work, args, out, f"kill-{i:02d}-a", first_plan))
        if rng.random() < rekill:  # kill the resumed run too
            plan = {"after_first_checkpoint": False}
            if rng.random() < mid_write_share:
                plan.update(mode="mid-write", skip_writes=0)
            else:
                from whisper_tune import checkpoint

                latest = checkpoint.latest(out / "checkpoints")
                left = STEPS - (int(latest.name.split("-")[1]) if latest else 0)
                plan.update(
                    mode="random", delay_s=round(rng.uniform(0.5 * startup_s, startup_s + 0.9 * left * step_s), 3)
                )
            events.append(kill_once(work, [*args, "--resume"], out, f"kill-{i:02d}-b", plan))
        final = work.run([*args, "--resume"], f"resume-{i:02d}", timeout=300)
        run = {
            "run": i,
            "kills": sum(e["killed"] for e in events),
            "mid_write_kills": sum(e["mid_write"] for e in events),
            "events": events,
            "resume_rc": final["rc"],
            "resume_timed_out": final["timed_out"],
            "resume_s": final["seconds"],
            "resume_fell_back": "falling back to" in final["stderr"],
            "resume_removed_temp": "left by an interrupted write" in final["stderr"],
            "temp_left_after_resume": temp_folders(out, out / "checkpoints"),
            "completed": final["rc"] == 0 and run_finished(out),
            "traceback": tail(final["stderr"]) if "Traceback" in final["stderr"] else None,
        }
        adapter = out / "adapter" / "adapter_model.safetensors"
        run["max_diff"] = adapter_difference(ref_adapter, adapter) if adapter.is_file() else None
        losses = train_losses(out)
        run["metrics_steps_once"] = [s for s, _ in losses] == list(range(1, STEPS + 1))
        run["max_loss_diff"] = (
            max(abs(a[1] - b[1]) for a, b in zip(losses, ref_losses)) if run["metrics_steps_once"] else None
        )
        if not run["completed"]:
            run["resume_stderr_tail"] = tail(final["stderr"], 12)
        runs.append(run)
        modes = ", ".join(e["mode"] + ("*" if e["mid_write"] else "") for e in events)
        print(
            f"  run {i:2d}: {run['kills']} kill(s) ({modes}), resume rc {final['rc']}, max diff {run['max_diff']}",
            flush=True,
        )
        shutil.rmtree(out / "prepared", ignore_errors=True)  # keep the work folder small

    diffs = [r["max_diff"] for r in runs if r["max_diff"] is not None]
    tracebacks = [e["traceback"] for r in runs for e in r["events"] if e["traceback"]]
    tracebacks += [r["traceback"] for r in runs if r["traceback"]]
    return {
        "question": "Is every SIGKILL survived, with the same adapter as an uninterrupted run?",
        "settings": {
            "runs": n_runs,
            "seed": seed,
            "rekill": rekill,
            "mid_write_share": mid_write_share,
            "steps": STEPS,
        },
        "reference": timing,
        "reference_repeat_max_diff": repeat_diff,
        "kills": sum(r["kills"] for r in runs),
        "kills_planned": sum(len(r["events"]) for r in runs),
        "mid_write_kills": sum(r["mid_write_kills"] for r in runs),
        "mid_write_targeted": sum(e["mode"] == "mid-write" for r in runs for e in r["events"]),
        "runs": n_runs,
        "runs_killed_twice": sum(r["kills"] >= 2 for r in runs),
        "runs_completed": sum(r["completed"] for r in runs),
        "runs_equal_exact": sum(r["max_diff"] == 0.0 for r in runs),
        "runs_equal_1e-6": sum(r["max_diff"] is not None and r["max_diff"] < 1e-6 for r in runs),
        "max_diff": max(diffs) if diffs else None,
        "runs_with_clean_metrics": sum(r["metrics_steps_once"] for r in runs),
        "max_loss_diff": max((r["max_loss_diff"] for r in runs if r["max_loss_diff"] is not None), default=None),
        "unreadable_finished_checkpoints": sum(len(e["unreadable_checkpoints"]) for r in runs for e in r["events"]),
        "resumes_that_fell_back": sum(r["resume_fell_back"] for r in runs),
        "temp_folders_left_after_resume": sum(len(r["temp_left_after_resume"]) for r in runs),
        "hangs": sum(r["resume_timed_out"] for r in runs),
        "tracebacks": tracebacks,
        "details": runs,
    }


# ---- 2. bad configurations -------------------------------------------------------------------


def bad_configs(work: Work, folder: Path, stopped_run: Path) -> list[tuple[str, str, list[str], Path]]:
    """(group, label, arguments after ``train``, the output folder that must stay untouched)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "list.yaml": "- train\n- eval\n",
        "scalar.yaml": "just a sentence\n",
        "invalid.yaml": "train: [batch_size: 4\n",
        "tabs.yaml": "train:\n\tbatch_size: 4\n",
        "unknown-section.yaml": "trian:\n  batch_size: 4\n",
        "unknown-key.yaml": "train:\n  batch_sise: 4\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "not-a-model").mkdir(exist_ok=True)
    (folder / "not-a-model" / "readme.txt").write_text("no config.json here\n")
    (folder / "empty-source").mkdir(exist_ok=True)
    (folder / "empty.jsonl").write_text("", encoding="utf-8")
    (folder / "a-file").write_text("x\n", encoding="utf-8")
    (folder / "missing-clips.jsonl").write_text(
        "".join(json.dumps({"audio": f"/nonexistent/clip{i}.wav", "text": "नमस्कार"}) + "\n" for i in range(4)),
        encoding="utf-8",
    )
    fake_run = folder / "fake-run"  # a folder that already holds a (dummy) finished checkpoint
    ckpt = fake_run / "checkpoints" / "step-000001"
    ckpt.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_model.safetensors", "training_state.safetensors", "training_state.json"):
        (ckpt / name).write_text("{}")
    missing = folder / "does-not-exist"

    cases: list[tuple[str, str, tuple[dict, list], Path | None]] = []

    def add(group, label, extra=None, flags=(), out=None, recipe=None):
        cases.append((group, label, (extra or {}, list(flags), recipe), out))

    issue = "issue"
    add(issue, "train.learning_rate=-1", {"train.learning_rate": -1})
    add(issue, "train.learning_rate=.nan", {"train.learning_rate": ".nan"})
    add(issue, "train.weight_decay=-1", {"train.weight_decay": -1})
    add(issue, "eval.batch_size=0", {"eval.batch_size": 0})
    add(issue, "eval.max_new_tokens=-1", {"eval.max_new_tokens": -1})
    add(issue, "train.max_steps=-5", {"train.max_steps": -5})
    add(issue, "train.max_steps=0", {"train.max_steps": 0})
    add(issue, "train.warmup_steps=-3", {"train.warmup_steps": -3})
    add(issue, "train.keep_last=0", {"train.keep_last": 0})
    add(issue, "train.max_grad_norm=-1", {"train.max_grad_norm": -1})
    add(issue, "data.language=xx", {"data.language": "xx"})
    add(issue, "data.source missing", {"data.source": missing / "corpus"})
    add(issue, "model.base missing folder", {"model.base": missing / "model"})
    add(issue, "unknown key train.batch_sise", {"train.batch_sise": 4})
    add(issue, "wrong type train.batch_size=four", {"train.batch_size": "four"})
    add(issue, "model.quantization=int4", {"model.quantization": "int4"})
    add(issue, "train.mixed_precision=fp8", {"train.mixed_precision": "fp8"})
    add(issue, "train.on_nan=ignore", {"train.on_nan": "ignore"})
    add(issue, "eval.metric=bleu", {"eval.metric": "bleu"})
    add(issue, "data.task=translat", {"data.task": "translat"})
    add(issue, "lora.targets=everything", {"lora.targets": "everything"})
    add(issue, "lora.r=0", {"lora.r": 0})
    add(issue, "lora.dropout=1.5", {"lora.dropout": 1.5})
    add(issue, "model.gradient_checkpointing=1.5", {"model.gradient_checkpointing": 1.5})
    add(issue, "data.max_seconds=45", {"data.max_seconds": 45})
    add(issue, "override without '='", flags=["train.batch_size"])
    add(issue, "--config file missing", flags=["--config", folder / "nope.yaml"])
    add(issue, "--config YAML list, not a mapping", flags=["--config", folder / "list.yaml"])
    add(issue, "--config invalid YAML", flags=["--config", folder / "invalid.yaml"])

    more = "more"
    add(more, "train.learning_rate=0", {"train.learning_rate": 0})
    add(more, "train.learning_rate=.inf", {"train.learning_rate": ".inf"})
    add(more, "train.learning_rate=fast", {"train.learning_rate": "fast"})
    add(more, "train.batch_size=0", {"train.batch_size": 0})
    add(more, "train.batch_size=-4", {"train.batch_size": -4})
    add(more, "train.batch_size=1.5", {"train.batch_size": 1.5})
    add(more, "train.batch_size=true", {"train.batch_size": "true"})
    add(more, "train.grad_accum=0", {"train.grad_accum": 0})
    add(more, "train.save_every=0", {"train.save_every": 0})
    add(more, "train.log_every=0", {"train.log_every": 0})
    add(more, "train.num_workers=-1", {"train.num_workers": -1})
    add(more, "train.warmup_steps=1.5", {"train.warmup_steps": 1.5})
    add(more, "train.max_steps=1e3 (a string)", {"train.max_steps": "1e3"})
    add(more, "train.epochs=0 (max_steps null)", {"train.max_steps": "null", "train.epochs": 0})
    add(more, "train.epochs=.nan (max_steps null)", {"train.max_steps": "null", "train.epochs": ".nan"})
    add(more, "train.max_grad_norm=.nan", {"train.max_grad_norm": ".nan"})
    add(more, "train.weight_decay=.inf", {"train.weight_decay": ".inf"})
    add(more, "eval.batch_size=-2", {"eval.batch_size": -2})
    add(more, "eval.max_new_tokens=0", {"eval.max_new_tokens": 0})
    add(more, "eval.every=-2", {"eval.every": -2})
    add(more, "eval.max_samples=0", {"eval.max_samples": 0})
    add(more, "lora.alpha=0", {"lora.alpha": 0})
    add(more, "lora.r=-4", {"lora.r": -4})
    add(more, "lora.dropout=-0.1", {"lora.dropout": -0.1})
    add(more, "lora.targets=[q_proj, 5]", {"lora.targets": "[q_proj, 5]"})
    add(more, "model.gradient_checkpointing=-1", {"model.gradient_checkpointing": -1})
    add(more, "data.max_seconds=0", {"data.max_seconds": 0})
    add(more, "data.max_seconds=-1", {"data.max_seconds": -1})
    add(more, "data.language=klingon", {"data.language": "klingon"})
    add(more, "data.source= (empty)", {"data.source": ""})
    add(more, "data.source=empty folder", {"data.source": folder / "empty-source"})
    add(more, "data.source=empty manifest", {"data.source": folder / "empty.jsonl"})
    add(more, "model.base=folder without config.json", {"model.base": folder / "not-a-model"})
    add(more, "model.base=relative path missing", {"model.base": "./no-such-model"})
    add(more, "unknown section foo.bar=1", {"foo.bar": 1})
    add(more, "typo data.langauge=mr", {"data.langauge": "mr"})
    add(more, "section set to a scalar: train=5", {"train": 5})
    add(more, "override into a value: train.output_dir.x=1", flags=["train.output_dir.x=1"])
    add(more, "override with empty key '=5'", flags=["=5"])
    add(more, "--config unknown recipe name", flags=["--config", "demoo"])
    add(more, "--config YAML scalar", flags=["--config", folder / "scalar.yaml"])
    add(more, "--config YAML with a tab", flags=["--config", folder / "tabs.yaml"])
    add(more, "--config unknown section", flags=["--config", folder / "unknown-section.yaml"])
    add(more, "--config unknown key", flags=["--config", folder / "unknown-key.yaml"])
    # Whole recipes written to a file (every fast-run setting, no overrides), with one bad value.
    add(more, "--config recipe with train.batch_size: four", recipe={"train.batch_size": "four"})
    add(more, "--config recipe with eval: 5 (section a scalar)", recipe={"eval": 5})
    add(more, "--config recipe with train.learning_rate: -0.001", recipe={"train.learning_rate": -0.001})
    add(more, "--config recipe with lora.targets: [q_proj, 5]", recipe={"lora.targets": ["q_proj", 5]})
    add(more, "existing run without --resume", out=fake_run)
    add(more, "train.output_dir is a file", out=folder / "a-file")

    later = "deeper"  # found by transformers, PEFT, numpy, the data or the checkpoint
    add(later, "model.attn_implementation=flash", {"model.attn_implementation": "flash"})
    add(later, "lora.targets=[no_such_proj]", {"lora.targets": "[no_such_proj]"})
    add(later, "train.seed=-1", {"train.seed": -1})
    add(later, "data.train_split=nosuch", {"data.train_split": "nosuch"})
    add(later, "data.source=manifest of missing clips", {"data.source": folder / "missing-clips.jsonl"})
    add(later, "--resume with lora.r=8 (checkpoint r 4)", {"lora.r": 8}, flags=["--resume"], out=stopped_run)
    add(later, "--resume with lora.targets=attn", {"lora.targets": "attn"}, flags=["--resume"], out=stopped_run)

    built = []
    for i, (group, label, (extra, flags, recipe), out) in enumerate(cases):
        if out is None:
            out = folder / f"out-{i:02d}"
        elif out == stopped_run:  # each gets its own copy of the stopped run
            copy = folder / f"out-{i:02d}"
            shutil.copytree(stopped_run, copy)
            out = copy
        if recipe is not None:
            path = folder / f"recipe-{i:02d}.yaml"
            write_recipe(path, work.overrides(out), recipe)
            built.append((group, label, ["--config", str(path)], out))
            continue
        args = work.overrides(out) + [f"{k}={v}" for k, v in extra.items()]
        args = [*flags, *args] if flags and flags[0].startswith("--") else [*args, *flags]
        built.append((group, label, [str(a) for a in args], out))
    return built


def write_recipe(path: Path, overrides: list[str], changes: dict) -> None:
    """The settings of ``overrides`` as a recipe YAML file, with ``changes`` (dotted keys) applied."""
    import yaml

    from whisper_tune.config import apply_overrides

    data = apply_overrides({}, overrides)
    for key, value in changes.items():
        *sections, name = key.split(".")
        node = data
        for section in sections:
            node = node[section]
        node[name] = value
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def section_configs(work: Work) -> dict:
    folder = work.root / "configs"
    stopped = work.root / "configs-stopped-run"
    stop = work.run(work.cli("train", *work.overrides(stopped), "--stop-after", 2), "configs-stopped-run", 300)
    if stop["rc"] != 0:
        raise SystemExit(f"could not make the stopped run:\n{tail(stop['stderr'])}")
    results = []
    for group, label, args, out in bad_configs(work, folder, stopped):
        before = snapshot(out)
        r = work.run(work.cli("train", *args), f"config-{label}", timeout=180)
        errors = error_lines(r["stderr"])
        loaded = "Loading weights" in r["stderr"]
        written = snapshot(out) != before
        one_line = r["rc"] == 2 and len(errors) == 1 and "Traceback" not in r["stderr"]
        if r["timed_out"]:
            verdict = "c"
        elif r["rc"] == 0:
            verdict = "d"
        elif one_line:
            verdict = "a" if not (loaded or written) else "b"
        else:
            verdict = "c"
        item = {
            "group": group,
            "config": label,
            "argv": ["train", *args],
            "verdict": verdict,
            "rc": r["rc"],
            "timed_out": r["timed_out"],
            "seconds": r["seconds"],
            "error": errors[0] if len(errors) == 1 else errors,
            "loaded_weights": loaded,
            "wrote_output": written,
        }
        if verdict != "a":
            item["stderr_tail"] = tail(r["stderr"], 30)
        results.append(item)
        print(f"  ({verdict}) {label}: {item['error'] if errors else 'rc ' + str(r['rc'])}"[:200], flush=True)
    counts = {v: sum(r["verdict"] == v for r in results) for v in "abcd"}
    by_group = {
        g: {v: sum(r["verdict"] == v for r in results if r["group"] == g) for v in "abcd"}
        | {"total": sum(r["group"] == g for r in results)}
        for g in dict.fromkeys(r["group"] for r in results)
    }
    return {
        "question": "Is every bad train invocation one line and exit 2 before anything loads?",
        "total": len(results),
        "refused_before_loading": counts["a"],
        "counts": counts,
        "by_group": by_group,
        "hangs": sum(r["timed_out"] for r in results),
        "not_a": [
            {k: r[k] for k in ("group", "config", "verdict", "rc", "error", "loaded_weights", "wrote_output")}
            for r in results
            if r["verdict"] != "a"
        ],
        "details": results,
    }


# ---- 3. hangs --------------------------------------------------------------------------------


def section_hangs(work: Work, timeout: float) -> dict:
    cases = [
        ("larger batch: 4 -> 16", {"train.batch_size": 16}),
        ("smaller batch: 4 -> 2", {"train.batch_size": 2}),
        ("grad_accum: 1 -> 2", {"train.grad_accum": 2}),
        ("batch 4 -> 8 and grad_accum 1 -> 3", {"train.batch_size": 8, "train.grad_accum": 3}),
    ]
    results = []
    for i, (label, change) in enumerate(cases):
        out = work.root / "hangs" / f"run-{i}"
        stop = work.run(work.cli("train", *work.overrides(out), "--stop-after", 3), f"hang-stop-{i}", 300)
        r = work.run(work.cli("train", *work.overrides(out, **change), "--resume"), f"hang-resume-{i}", timeout)
        item = {
            "case": label,
            "stop_rc": stop["rc"],
            "rc": r["rc"],
            "timed_out": r["timed_out"],
            "seconds": r["seconds"],
            "finished": r["rc"] == 0 and run_finished(out),
            "note": next((line for line in stderr_lines(r["stderr"]) if "resuming with" in line), None),
            "traceback": tail(r["stderr"]) if "Traceback" in r["stderr"] else None,
        }
        if not item["finished"]:
            item["stderr_tail"] = tail(r["stderr"], 15)
        results.append(item)
        print(f"  {label}: rc {r['rc']}, {r['seconds']} s, finished {item['finished']}", flush=True)
    return {
        "question": "Does a resume with another batch size or accumulation finish (no hang)?",
        "timeout_s": timeout,
        "cases": len(results),
        "hangs": sum(r["timed_out"] for r in results),
        "finished": sum(r["finished"] for r in results),
        "details": results,
    }


# ---- 4. pickles ------------------------------------------------------------------------------


class Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def crafted(path: Path, marker: Path, like: str) -> None:
    """A torch.save file whose loading with full pickle creates ``marker``."""
    import torch

    content = {"step": 9, "x": Payload(marker)} if like == "state" else {"base_model.model.x": Payload(marker)}
    torch.save(content, path)


PATTERNS = {
    "torch.load": re.compile(r"\btorch\.load\s*\("),
    "pickle.load(s)": re.compile(r"\b(c?pickle|dill|joblib)\.loads?\s*\(|\bUnpickler\s*\("),
    "weights_only=False": re.compile(r"weights_only\s*=\s*False"),
    "np.load(..allow_pickle": re.compile(r"\b(np|numpy)\.load\s*\(.*allow_pickle"),
}


def grep_src() -> list[dict]:
    hits = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for name, pattern in PATTERNS.items():
                if pattern.search(line):
                    hits.append(
                        {
                            "pattern": name,
                            "where": f"{path.relative_to(ROOT)}:{n}",
                            "line": line.strip(),
                            "weights_only_true": "weights_only=True" in line.replace(" ", ""),
                        }
                    )
    return hits


def section_pickles(work: Work) -> dict:
    folder = work.root / "pickles"
    folder.mkdir(parents=True, exist_ok=True)
    markers = folder / "markers"
    markers.mkdir(exist_ok=True)

    # Control: the payload is live when unpickled the unsafe way.
    control_marker = markers / "control"
    crafted(folder / "control.pt", control_marker, "state")
    code = f"import torch; torch.load({str(folder / 'control.pt')!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], env=work.env, capture_output=True, timeout=120)
    control_live = control_marker.exists()

    runs = {}
    for name, flags in (("alone", ["--stop-after", 2]), ("beside", ["--stop-after", 2]), ("finished", [])):
        out = folder / f"run-{name}"
        extra = {"train.max_steps": 2} if name == "finished" else {}
        r = work.run(work.cli("train", *work.overrides(out, **extra), *flags), f"pickle-run-{name}", 300)
        if r["rc"] != 0:
            raise SystemExit(f"could not make the {name} run:\n{tail(r['stderr'])}")
        runs[name] = out

    cases = []
    # (1) an older version's checkpoint: only training_state.pt, newer than the real ones
    out = runs["alone"]
    legacy = out / "checkpoints" / "step-000009"
    legacy.mkdir()
    crafted(legacy / "training_state.pt", markers / "alone", "state")
    cases.append(
        (
            "training_state.pt alone in checkpoints/step-000009, train --resume",
            "alone",
            work.cli("train", *work.overrides(out), "--resume"),
        )
    )
    # (2) pickles beside the current files of the latest checkpoint
    out = runs["beside"]
    from whisper_tune import checkpoint

    latest = checkpoint.latest(out / "checkpoints")
    for fname in ("training_state.pt", "optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        crafted(latest / fname, markers / f"beside-{fname}", "state")
    cases.append(
        (
            f"training_state.pt + optimizer.pt, scheduler.pt, rng_state.pth, training_args.bin in "
            f"{latest.name} beside its safetensors/json, train --resume",
            "beside",
            work.cli("train", *work.overrides(out), "--resume"),
        )
    )
    # (3) an adapter folder whose safetensors file is replaced by adapter_model.bin
    adapter = folder / "adapter-bin"
    shutil.copytree(runs["finished"] / "adapter", adapter)  # a run's final adapter folder
    (adapter / "adapter_model.safetensors").unlink()
    crafted(adapter / "adapter_model.bin", markers / "adapter-evaluate", "adapter")
    cases.append(
        (
            "adapter_model.bin (no safetensors), evaluate --adapter",
            "adapter-evaluate",
            work.cli(
                "evaluate",
                "--model",
                work.model,
                "--adapter",
                adapter,
                "--data",
                work.corpus,
                "--split",
                "test",
                "--max-samples",
                2,
                "--batch-size",
                2,
                "--max-new-tokens",
                4,
                "--out",
                folder / "eval-out",
            ),
        )
    )
    adapter2 = folder / "adapter-bin-merge"
    shutil.copytree(adapter, adapter2)
    (adapter2 / "adapter_model.bin").unlink()
    crafted(adapter2 / "adapter_model.bin", markers / "adapter-merge", "adapter")
    cases.append(
        (
            "adapter_model.bin (no safetensors), merge --adapter",
            "adapter-merge",
            work.cli(
                "merge", "--model", work.model, "--adapter", adapter2, "--out", folder / "merged", "--dtype", "float32"
            ),
        )
    )
    results = []
    for label, marker_prefix, args in cases:
        r = work.run(args, f"pickle-{marker_prefix}", timeout=300)
        errors = error_lines(r["stderr"])
        fired = sorted(p.name for p in markers.iterdir() if p.name.startswith(marker_prefix))
        item = {
            "case": label,
            "argv": [str(a) for a in args[3:]],
            "rc": r["rc"],
            "timed_out": r["timed_out"],
            "one_line": r["rc"] == 2 and len(errors) == 1 and "Traceback" not in r["stderr"],
            "error": errors[0] if len(errors) == 1 else errors,
            "traceback": "Traceback" in r["stderr"],
            "markers": fired,
            # PEFT's fallback for a folder without safetensors: torch.load(weights_only=True), a restricted unpickler
            "opened_with_torch_load": "torch_load(" in r["stderr"] or "Weights only load failed" in r["stderr"],
        }
        if item["traceback"] or (r["rc"] not in (0, 2)):
            item["stderr_tail"] = tail(r["stderr"], 30)
        results.append(item)
        print(f"  {label}: rc {r['rc']}, markers {fired}, {item['error'] or 'no error line'}"[:220], flush=True)
    hits = grep_src()
    return {
        "question": "Is any pickle in a run folder ever unpickled?",
        "grep_hits": hits,
        "grep_hits_without_weights_only_true": sum(not h["weights_only_true"] for h in hits),
        "control_payload_live": control_live,
        "markers_created": sum(len(r["markers"]) for r in results),
        "cases": results,
    }


# ---- 5. round three (issue 29 items 4-8) -----------------------------------------------------


def _craft_adapter(work: Work) -> Path:
    """A LoRA adapter of the tiny model (q/v/fc1, r 4), laid out as a run leaves it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from whisper_tune.config import ModelConfig
    from whisper_tune.run import write_adapter_meta

    torch.manual_seed(2)
    model = get_peft_model(
        WhisperForConditionalGeneration.from_pretrained(work.model),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1"], init_lora_weights=False),
    )
    out = work.root / "round3" / "adapter"
    model.save_pretrained(out)
    WhisperProcessor.from_pretrained(work.model).save_pretrained(out)
    write_adapter_meta(out, ModelConfig(base=str(work.model), quantization="none"), "mr", "transcribe")
    return out


def _adapter_crafts() -> dict:
    """name -> change(folder): the crafted and damaged adapters of issue 29 item 4."""
    import struct

    from safetensors.torch import load_file, save_file

    def edit_json(name, **changes):
        def change(folder):
            path = folder / name
            path.write_text(json.dumps(json.loads(path.read_text()) | changes))

        return change

    def edit_tensors(fn):
        def change(folder):
            path = folder / "adapter_model.safetensors"
            save_file(fn(load_file(str(path))), str(path))

        return change

    def nan_tensor(tensors):
        first = sorted(tensors)[0]
        tensors[first][0, 0] = float("nan")
        return tensors

    def raw_config(old, new):
        def change(folder):
            path = folder / "adapter_config.json"
            path.write_text(path.read_text().replace(old, new))

        return change

    def big_shape(folder):
        name = "base_model.model.model.encoder.layers.0.fc1.lora_A.weight"
        header = json.dumps({name: {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 16]}}).encode()
        (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)

    return {
        "r: 0": edit_json("adapter_config.json", r=0),
        "unknown target_modules": edit_json("adapter_config.json", target_modules=["conv9"]),
        "peft_type PREFIX_TUNING": edit_json("adapter_config.json", peft_type="PREFIX_TUNING"),
        "adapter_config.json invalid JSON": lambda f: (f / "adapter_config.json").write_text("{r: 4,"),
        "modules_to_save": edit_json("adapter_config.json", modules_to_save=["proj_out"]),
        "whisper_tune.json not UTF-8": lambda f: (f / "whisper_tune.json").write_bytes(b'{"base": "\xff\xfe"}'),
        "safetensors header of 2**62": lambda f: (f / "adapter_model.safetensors").write_bytes(
            struct.pack("<Q", 2**62) + b"{}"
        ),
        "shape 1e9 x 1e9": big_shape,
        "rank mismatch (config r 8, tensors r 4)": edit_json("adapter_config.json", r=8),
        "lora_alpha NaN": raw_config('"lora_alpha": 8', '"lora_alpha": NaN'),
        "lora_alpha Infinity": raw_config('"lora_alpha": 8', '"lora_alpha": Infinity'),
        "NaN in a tensor": edit_tensors(nan_tensor),
        "renamed keys": edit_tensors(lambda t: {k.replace("lora_A", "lora_X"): v for k, v in t.items()}),
        "empty safetensors": edit_tensors(lambda t: {}),
        "bogus quantization": edit_json("whisper_tune.json", quantization="int3"),
        "bogus task": edit_json("whisper_tune.json", task="summarize"),
    }


def _verdict(r: dict, out: Path | None, before, expect: str, ok_text: str | None = None) -> str:
    """refuse: (a) one line, exit 2, before loading, nothing written; (b) one line after loading
    or writing; (c) traceback, other exit code, timeout; (d) accepted. handle (warnings, a
    fallback, listed rejections): (h) exit 0 and ``ok_text`` in stderr or the output; (d) exit 0
    without it; (c) anything else."""
    errors = error_lines(r["stderr"])
    if r["timed_out"] or "Traceback" in r["stderr"]:
        return "c"
    if expect == "handle":
        return ("h" if ok_text is None or ok_text in r["stderr"] else "d") if r["rc"] == 0 else "c"
    if r["rc"] == 0:
        return "d"
    if r["rc"] == 2 and len(errors) == 1:
        loaded = "Loading weights" in r["stderr"] or "engine:" in r["stderr"]
        written = out is not None and snapshot(out) != before
        return "b" if loaded or written else "a"
    return "c"


def section_round3(work: Work) -> dict:
    """Issue 29 items 4-8: crafted adapters, unwritable outputs, config holes, a damaged
    training_state.json, transcripts with control characters and repeated clips."""
    root = work.root / "round3"
    root.mkdir(parents=True, exist_ok=True)
    adapter = _craft_adapter(work)
    clip = sorted((work.corpus / "clips").glob("*"))[0]
    cases = []  # (item, label, argv, out, expect, ok_text, prepare)

    for name, change in _adapter_crafts().items():
        folder = root / f"adapter-{len(cases)}"

        def prep(folder=folder, change=change):
            shutil.copytree(adapter, folder)
            change(folder)

        cases.append(("4 adapter", f"merge: {name}", ["merge", "--adapter", folder, "--out", root / f"m{len(cases)}"],
                      root / f"m{len(cases)}", "refuse", None, prep))  # fmt: skip

    taken = root / "a-file"
    taken.write_text("x")
    for label, argv in (
        ("transcribe --out /proc/x", ["transcribe", clip, "--model", work.model, "--out", "/proc/whisper-tune"]),
        ("transcribe --out an existing file", ["transcribe", clip, "--model", work.model, "--out", taken]),
        ("merge --out an existing file", ["merge", "--adapter", adapter, "--out", taken]),
        ("prepare --out /proc/x", ["prepare", "--data", work.corpus, "--split", "train", "--out", "/proc/wt"]),
        ("prepare --out an existing file", ["prepare", "--data", work.corpus, "--split", "train", "--out", taken]),
        ("train output_dir=/proc/x", ["train", *work.overrides("/proc/whisper-tune-run")]),
        ("train output_dir an existing file", ["train", *work.overrides(taken)]),
    ):
        cases.append(("5 outputs", label, argv, taken, "refuse", None, None))

    bert, negative = root / "bert-base", root / "negative-base"
    for folder, change in ((bert, {"model_type": "bert"}), (negative, {"encoder_layers": -2})):

        def prep(folder=folder, change=change):
            shutil.copytree(work.model, folder, dirs_exist_ok=True)
            config = json.loads((folder / "config.json").read_text())
            (folder / "config.json").write_text(json.dumps(config | change))

        prep()
    noise_free = {"augment.noise_prob": 0.5}
    for label, extra in (
        ("lora.targets=[]", {"lora.targets": "[]"}),
        ("base config with encoder_layers -2", {"model.base": negative}),
        ("base model_type bert", {"model.base": bert}),
        ("lora.r=1000 (width 64)", {"lora.r": 1000}),
        ("train.learning_rate=1e300", {"train.learning_rate": "1e300"}),
        ("train.max_steps=10**12", {"train.max_steps": 10**12}),
        ("train.grad_accum=10**9", {"train.grad_accum": 10**9}),
        ("train.compile=true on the CPU", {"train.compile": "true"}),
        ("augment.noise_dir missing", noise_free | {"augment.noise_dir": root / "no-noise"}),
    ):
        out = root / f"run-{len(cases)}"
        cases.append(("6 config", label, ["train", *work.overrides(out, **extra)], out, "refuse", None, None))
    twice = root / "twice.yaml"
    twice.write_text("train:\n  batch_size: 4\nlora:\n  r: 4\ntrain:\n  learning_rate: 1.0e-3\n")
    out = root / f"run-{len(cases)}"
    cases.append(("6 config", "YAML with two train: blocks", ["train", "--config", twice, *work.overrides(out)], out,
                  "refuse", None, None))  # fmt: skip
    for label, extra, says in (
        ("warmup_steps 100 > max_steps 8", {"train.warmup_steps": 100}, "warmup_steps (100) is above"),
        ("batch 64 > 20 training clips", {"train.batch_size": 64}, "larger than the"),
        ("num_workers=1000 on 2 cores", {"train.num_workers": 1000, "train.max_steps": 2}, "capped to the"),
    ):
        out = root / f"run-{len(cases)}"
        cases.append(("6 config", label, ["train", *work.overrides(out, **extra)], None, "handle", says, None))

    stopped = root / "stopped"
    stop = work.run(work.cli("train", *work.overrides(stopped), "--stop-after", 3), "round3-stopped", 300)
    if stop["rc"] != 0:
        raise SystemExit(f"could not make the stopped run:\n{tail(stop['stderr'])}")
    for label, changes, hashed in (
        ("training_state.json step edited (hash kept)", {"step": 2}, True),
        ("training_state.json step -50 (hash removed)", {"step": -50}, False),
        ("training_state.json micro_done 10**12 (hash removed)", {"micro_done": 10**12}, False),
        ("training_state.json optimizer null (hash removed)", {"optimizer": None}, False),
        ("training_state.json epoch 'x' (hash removed)", {"epoch": "x"}, False),
    ):
        run = root / f"resume-{len(cases)}"

        def prep(run=run, changes=changes, hashed=hashed):
            shutil.copytree(stopped, run)
            path = run / "checkpoints" / "step-000003" / "training_state.json"
            record = json.loads(path.read_text())
            record["state"] |= changes
            if not hashed:
                record.pop("state_sha256", None)
            path.write_text(json.dumps(record))

        cases.append(("7 state", label, ["train", *work.overrides(run), "--resume"], None, "handle", "falling back",
                      prep))  # fmt: skip

    manifest = root / "texts.jsonl"
    rows = [
        (clip, "ठीक आहे"),
        (sorted((work.corpus / "clips").glob("*"))[1], "ठीक\x00आहे"),
        (sorted((work.corpus / "clips").glob("*"))[2], "\x1b[31mलाल\x1b[0m"),
        (sorted((work.corpus / "clips").glob("*"))[3], "एक"),
        (sorted((work.corpus / "clips").glob("*"))[3], "दोन"),
        (sorted((work.corpus / "clips").glob("*"))[3], "तीन"),
    ]
    manifest.write_text("".join(json.dumps({"audio": str(a), "text": t}) + "\n" for a, t in rows))
    cases.append(("8 texts", "prepare: NUL and escape codes in transcripts", ["prepare", "--data", manifest,
                  "--out", root / "texts"], None, "handle", "control_chars", None))  # fmt: skip
    cases.append(("8 texts", "prepare: one clip with three transcripts", ["prepare", "--data", manifest,
                  "--out", root / "texts2"], None, "handle", "conflicting_text", None))  # fmt: skip
    out = root / "stop-after-override"
    cases.append(("8 cli", "train --stop-after 2 train.learning_rate=2e-3", ["train", *work.overrides(out),
                  "--stop-after", 2, "train.learning_rate=2e-3"], None, "handle", None, None))  # fmt: skip

    results = []
    for item, label, argv, out, expect, ok_text, prep in cases:
        if prep:
            prep()
        before = snapshot(out) if out is not None else None
        r = work.run(work.cli(*argv), f"round3-{label}", timeout=300)
        text = r["stderr"]
        if item == "8 texts":  # the listed reasons are in stdout's summary and rejected.jsonl
            rejected = Path(argv[-1]) / "rejected.jsonl"
            text += rejected.read_text(encoding="utf-8") if rejected.exists() else ""
        verdict = _verdict(r | {"stderr": text}, out, before, expect, ok_text)
        errors = error_lines(r["stderr"])
        row = {"item": item, "case": label, "argv": [str(a) for a in argv], "expect": expect, "verdict": verdict,
               "rc": r["rc"], "seconds": r["seconds"], "error": errors[0] if len(errors) == 1 else errors}  # fmt: skip
        if verdict not in ("a", "h"):
            row["stderr_tail"] = tail(r["stderr"], 30)
        results.append(row)
        print(f"  ({verdict}) {label}: {row['error'] if errors else 'rc ' + str(r['rc'])}"[:220], flush=True)
    counts = {v: sum(r["verdict"] == v for r in results) for v in "abcdh"}
    return {
        "question": "Crafted adapters, unwritable outputs, config holes, a bad training_state.json, odd transcripts",
        "cases": len(results),
        "refused_before_loading": counts["a"],
        "refused_after_loading": counts["b"],
        "tracebacks_or_other": counts["c"],
        "silent_accepts": counts["d"],
        "handled": counts["h"],
        "refuse_cases": sum(r["expect"] == "refuse" for r in results),
        "handle_cases": sum(r["expect"] == "handle" for r in results),
        "details": results,
    }


# ---- report ----------------------------------------------------------------------------------


def git_state() -> dict:
    def git(*args):
        try:
            return subprocess.run(
                ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except OSError:
            return None

    return {
        "commit": git("rev-parse", "HEAD"),
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", "src")),
    }


def environment() -> dict:
    from importlib import metadata

    versions = {}
    for name in ("torch", "transformers", "peft", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(), **versions}


def markdown(result: dict) -> str:
    lines = [
        "# Reliability probe (issues 13 and 29)",
        "",
        f"`{result['command']}`",
        "",
        f"Code: {result['git']['branch']} @ {result['git']['commit']}"
        f"{' (src/ modified)' if result['git']['dirty'] else ''}; {result['environment']['platform']}, "
        f"{result['environment']['cpus']} CPUs, torch {result['environment']['torch']}, "
        f"transformers {result['environment']['transformers']}, peft {result['environment']['peft']}; "
        f"{result['seconds'] / 60:.1f} min. Details of every run: probe.json.",
        "",
        "| question | figure |",
        "|---|---|",
    ]
    k, c, h, p = (result.get(s) for s in SECTIONS[:4])
    if k:
        lines += [
            f"| SIGKILLs during training (mid-checkpoint-write) | {k['kills']} ({k['mid_write_kills']}), "
            f"{k['runs']} runs, {k['runs_killed_twice']} killed twice |",
            f"| resumed runs ending with the reference adapter | {k['runs_equal_exact']} of {k['runs']} exactly "
            f"(max difference {k['max_diff']}); {k['runs_completed']} of {k['runs']} completed |",
            f"| finished checkpoints unreadable after a kill | {k['unreadable_finished_checkpoints']} |",
            f"| metrics.jsonl with steps 1..{STEPS} once each, reference losses | {k['runs_with_clean_metrics']} of "
            f"{k['runs']} (max loss difference {k['max_loss_diff']}) |",
            f"| temporary folders left after the resume | {k['temp_folders_left_after_resume']} |",
            f"| tracebacks | {len(k['tracebacks'])} |",
        ]
    if c:
        lines.append(
            f"| bad configurations refused in one line, exit 2, before loading | {c['refused_before_loading']} of "
            f"{c['total']} (one line after loading: {c['counts']['b']}; traceback/other: {c['counts']['c']}; "
            f"accepted: {c['counts']['d']}) |"
        )
    if h:
        lines.append(
            f"| hangs resuming with another batch size / accumulation | {h['hangs']} of {h['cases']} "
            f"({h['finished']} finished, timeout {h['timeout_s']:g} s) |"
        )
    if p:
        lines += [
            f"| pickle payloads that ran (marker files) | {p['markers_created']} of {len(p['cases'])} planted cases "
            f"(control with weights_only=False: {'ran' if p['control_payload_live'] else 'did NOT run'}) |",
            f"| unpickling calls in src/ | {len(p['grep_hits'])} "
            f"({p['grep_hits_without_weights_only_true']} without weights_only=True) |",
        ]
    if k:
        lines += [
            "",
            f"## 1. {k['question']}",
            "",
            f"Reference: {k['reference']['total_s']} s, first checkpoint at {k['reference']['first_checkpoint_s']} s; "
            f"a second uninterrupted run differs by {k['reference_repeat_max_diff']}. "
            f"Kills planned {k['kills_planned']}, delivered {k['kills']} (a planned kill is not delivered when the "
            f"run ends first); mid-write targeted {k['mid_write_targeted']}, landed {k['mid_write_kills']} "
            f"(temporary checkpoint folder still there after the kill). Resumes that fell back past a damaged "
            f"checkpoint: {k['resumes_that_fell_back']}.",
            "",
            "| run | kills (* mid-write) | checkpoints after kill | resume | max diff |",
            "|---|---|---|---|---|",
        ]
        for r in k["details"]:
            kills = ", ".join(
                f"{e['mode']}{'*' if e['mid_write'] else ''}{'' if e['killed'] else ' (ended first)'}"
                for e in r["events"]
            )
            after = " / ".join(
                ",".join(n.split("-")[1].lstrip("0") for n in e["finished_checkpoints"]) for e in r["events"]
            )
            lines.append(
                f"| {r['run']} | {kills} | {after} | rc {r['resume_rc']}, {r['resume_s']} s | {r['max_diff']} |"
            )
        for tb in k["tracebacks"]:
            lines += ["", "```", tb, "```"]
    if c:
        lines += [
            "",
            f"## 2. {c['question']}",
            "",
            "(a) exit 2, one `whisper-tune: error:` line, no traceback, output folder untouched, no "
            '"Loading weights"; (b) one line after loading or writing; (c) traceback, other exit code or '
            "timeout; (d) accepted.",
            "",
            "| group | total | a | b | c | d |",
            "|---|---|---|---|---|---|",
        ]
        for g, n in c["by_group"].items():
            lines.append(f"| {g} | {n['total']} | {n['a']} | {n['b']} | {n['c']} | {n['d']} |")
        lines += ["", "| group | configuration | verdict | message |", "|---|---|---|---|"]
        for r in c["details"]:
            msg = r["error"] if isinstance(r["error"], str) else f"rc {r['rc']}, {len(r['error'])} error lines"
            msg = msg.replace(ERROR_PREFIX, "").strip().replace("|", "\\|")
            lines.append(f"| {r['group']} | `{r['config']}` | {r['verdict']} | {msg[:160]} |")
        for r in c["details"]:
            if r["verdict"] == "c":
                lines += ["", f"`{r['config']}` (rc {r['rc']}):", "```", r.get("stderr_tail", ""), "```"]
    if h:
        lines += [
            "",
            f"## 3. {h['question']}",
            "",
            "| case | rc | seconds | finished | note |",
            "|---|---|---|---|---|",
        ]
        for r in h["details"]:
            lines.append(f"| {r['case']} | {r['rc']} | {r['seconds']} | {r['finished']} | {r['note'] or ''} |")
    if p:
        lines += [
            "",
            f"## 4. {p['question']}",
            "",
            "| case | rc | one line | markers | opened by torch.load (weights_only) | message |",
            "|---|---|---|---|---|---|",
        ]
        for r in p["cases"]:
            msg = r["error"] if isinstance(r["error"], str) else ("traceback" if r["traceback"] else "-")
            msg = msg.replace(ERROR_PREFIX, "").strip().replace("|", "\\|")
            opened = "yes" if r["opened_with_torch_load"] else "no"
            lines.append(
                f"| {r['case']} | {r['rc']} | {r['one_line']} | {len(r['markers'])} | {opened} | {msg[:200]} |"
            )
        lines += ["", "Unpickling calls in src/:", ""]
        lines += [f"- `{x['where']}`: `{x['line']}`" for x in p["grep_hits"]] or ["- none"]
        for r in p["cases"]:
            if r.get("stderr_tail"):
                lines += ["", f"{r['case']} (rc {r['rc']}):", "```", r["stderr_tail"], "```"]
    if r3 := result.get("round3"):
        lines += [
            f"| round three (issue 29 items 4-8): cases | {r3['cases']} ({r3['refuse_cases']} to refuse, "
            f"{r3['handle_cases']} to handle: a warning, a fallback, listed rejections, a parse) |",
            f"| refused in one line, exit 2, before loading, nothing written | {r3['refused_before_loading']} |",
            f"| refused in one line after loading or writing | {r3['refused_after_loading']} |",
            f"| tracebacks, other exit codes, timeouts | {r3['tracebacks_or_other']} |",
            f"| silent accepts | {r3['silent_accepts']} |",
            f"| handled as asked (warned, fell back, listed) | {r3['handled']} |",
            "",
            f"## 5. {r3['question']}",
            "",
            "(a) exit 2, one `whisper-tune: error:` line, no traceback, nothing written, nothing loaded; (b) one "
            "line after loading or writing; (c) traceback, other exit code or timeout; (d) accepted silently; "
            "(h) exit 0 with the warning, fallback or listed reason expected.",
            "",
            "| item | case | verdict | rc | message |",
            "|---|---|---|---|---|",
        ]
        for r in r3["details"]:
            msg = r["error"] if isinstance(r["error"], str) else "; ".join(r["error"]) or "-"
            msg = msg.replace(ERROR_PREFIX, "").strip().replace("|", "\\|")
            lines.append(f"| {r['item']} | {r['case']} | {r['verdict']} | {r['rc']} | {msg[:220]} |")
        for r in r3["details"]:
            if r.get("stderr_tail"):
                lines += ["", f"{r['case']} (rc {r['rc']}):", "```", r["stderr_tail"][-3000:], "```"]
    return "\n".join(lines) + "\n"


def summary(result: dict) -> str:
    out = []
    if k := result.get("kills"):
        out.append(
            f"kills: {k['kills']} SIGKILLs ({k['mid_write_kills']} mid-checkpoint-write) over {k['runs']} runs; "
            f"{k['runs_completed']}/{k['runs']} completed; {k['runs_equal_exact']}/{k['runs']} equal to the reference "
            f"(max diff {k['max_diff']}); tracebacks {len(k['tracebacks'])}"
        )
    if c := result.get("configs"):
        out.append(
            f"configs: {c['refused_before_loading']}/{c['total']} refused in one line before loading; others: "
            + ("; ".join(f"({x['verdict']}) {x['config']}" for x in c["not_a"]) or "none")
        )
    if h := result.get("hangs"):
        out.append(f"hangs: {h['hangs']} of {h['cases']} (finished {h['finished']})")
    if p := result.get("pickles"):
        out.append(
            f"pickles: {p['markers_created']} markers created in {len(p['cases'])} cases (control live: "
            f"{p['control_payload_live']}); src/ unpickling calls: {len(p['grep_hits'])}"
        )
    if r := result.get("round3"):
        out.append(
            f"round3: {r['cases']} cases ({r['refuse_cases']} to refuse, {r['handle_cases']} to handle): refused in "
            f"one line before loading {r['refused_before_loading']}, after loading {r['refused_after_loading']}, "
            f"tracebacks/other {r['tracebacks_or_other']}, silent accepts {r['silent_accepts']}, handled "
            f"{r['handled']}"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="interrupted runs (default 20)")
    parser.add_argument("--seed", type=int, default=13, help="seeds the kill moments and modes")
    parser.add_argument("--rekill", type=float, default=0.35, help="chance that a resumed run is killed again")
    parser.add_argument("--mid-write", type=float, default=0.35, help="share of kills aimed at a checkpoint write")
    parser.add_argument("--hang-timeout", type=float, default=300)
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reliability"))
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one, removed at the end)")
    args = parser.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if unknown := set(sections) - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")

    import whisper_tune

    prefix = "PYTHONPATH=src " if Path(whisper_tune.__file__).resolve().is_relative_to(ROOT / "src") else ""
    command = prefix + "python " + " ".join(shlex.quote(a) for a in sys.argv)
    t0 = time.perf_counter()
    root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="whisper-tune-probe-"))
    root.mkdir(parents=True, exist_ok=True)
    work = Work(root)
    print(f"work folder {root}; building the tiny model and the corpus", flush=True)
    work.build()
    result = {"command": command, "git": git_state(), "environment": environment(), "package": whisper_tune.__file__}
    try:
        for section in sections:
            print(f"== {section}", flush=True)
            s0 = time.perf_counter()
            if section == "kills":
                result["kills"] = section_kills(work, args.kills, args.seed, args.rekill, args.mid_write)
            elif section == "configs":
                result["configs"] = section_configs(work)
            elif section == "hangs":
                result["hangs"] = section_hangs(work, args.hang_timeout)
            elif section == "round3":
                result["round3"] = section_round3(work)
            else:
                result["pickles"] = section_pickles(work)
            result[section]["seconds"] = round(time.perf_counter() - s0, 1)
    finally:
        result["seconds"] = round(time.perf_counter() - t0, 1)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "probe.json").write_text(
            json.dumps(result, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
        )
        if all(s in result for s in sections):
            (out / "probe.md").write_text(markdown(result), encoding="utf-8")
        if not args.work:
            shutil.rmtree(root, ignore_errors=True)
    print(summary(result))
    print(f"{result['seconds'] / 60:.1f} min; results in {out}")


if __name__ == "__main__":
    main()
