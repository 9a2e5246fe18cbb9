"""What a user watches during and after a run: ``metrics.jsonl``, TensorBoard events, the
loss/WER plot, the training speed, and the library versions, device and peak memory that
``run.json`` records."""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import time
from importlib import metadata
from pathlib import Path

import torch

from .run import METRICS_FILE, PLOT_FILE

log = logging.getLogger(__name__)

PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "jiwer", "whisper-tune")


class MetricsLog:
    """Appends one JSON line per record and mirrors numbers to TensorBoard when installed."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.path = run_dir / METRICS_FILE
        if resume_step is not None and self.path.exists():
            # Drop what the interrupted run logged after its last checkpoint: it is redone.
            kept = [
                line
                for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        elif self.path.exists():
            self.path.unlink()
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)
        except ImportError:
            log.info("tensorboard is not installed: metrics go to %s only", self.path)

    def log(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key.replace("eval_", "eval/").replace("train_", "train/"), value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def metrics_figure(records: list[dict], title: str):
    """Training loss and eval WER/CER against step, as a matplotlib figure (None without
    numbers to draw). Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    evals = [(r["step"], r.get("eval_wer"), r.get("eval_cer")) for r in records if "eval_wer" in r]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train:
        ax.plot(*zip(*train), color="tab:blue", label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss", color="tab:blue")
    if evals:
        ax2 = ax.twinx()
        steps, wer, cer = zip(*evals)
        ax2.plot(steps, wer, "o-", color="tab:red", label="eval WER %")
        ax2.plot(steps, cer, "s--", color="tab:orange", label="eval CER %")
        ax2.set_ylabel("error rate (%)", color="tab:red")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_run(run_dir: Path) -> Path | None:
    """Training loss and eval WER/CER against step, as ``training.png`` in the run folder."""
    try:
        fig = metrics_figure(read_metrics(run_dir), f"whisper-tune: {Path(run_dir).name}")
    except ImportError:
        log.warning("matplotlib is not installed: no %s (pip install matplotlib)", PLOT_FILE)
        return None
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    out = Path(run_dir) / PLOT_FILE
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def environment(device: torch.device) -> dict:
    """Versions and hardware, for run.json and benchmark results."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu"] = platform.processor() or platform.machine()
        env["cpu_threads"] = torch.get_num_threads()
    return env


def peak_memory_gib(device: torch.device) -> dict:
    """Peak GPU memory allocated by torch, or the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return {"peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    import resource

    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


class Throughput:
    """Samples per second of a training loop, overall and steady.

    The overall rate is everything from the loop's start. The steady rate leaves out the
    first step after each DataLoader start (the run's first also warms the model up:
    kernel autotuning, the allocator growing) and what :meth:`left_out` wraps (evaluation,
    checkpoint writes): a 40-step benchmark would otherwise count them as training speed.
    Only the edges of what is left out wait for the device, a few times an epoch; the
    rates are exact where the caller has just waited for it (the run reads its losses
    before it logs).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.start = time.perf_counter()
        self.samples = 0
        self.left_out_s, self.left_out_samples = 0.0, 0
        self._next_step_from: float | None = None

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def leave_out_next_step(self) -> None:
        """Call before a DataLoader starts: its first step is not steady."""
        self._next_step_from = self._now()

    def step_done(self, samples: int) -> None:
        self.samples += samples
        if self._next_step_from is not None:
            self.left_out_s += self._now() - self._next_step_from
            self.left_out_samples += samples
            self._next_step_from = None

    @contextlib.contextmanager
    def left_out(self):
        """Time that is not training (an evaluation, a checkpoint write)."""
        start = self._now()
        try:
            yield
        finally:
            self.left_out_s += self._now() - start

    def wall_s(self) -> float:
        return time.perf_counter() - self.start

    def overall(self) -> float:
        wall = self.wall_s()
        return self.samples / wall if wall > 0 else 0.0

    def steady(self) -> float | None:
        """None until a step counts (a run of one step per loader start has none)."""
        samples, wall = self.samples - self.left_out_samples, self.wall_s() - self.left_out_s
        return samples / wall if samples > 0 and wall > 0 else None
