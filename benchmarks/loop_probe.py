"""Where a `whisper-tune train` step's time goes when the loop is slower than `bench train`:
the loader alone, the step alone on one real batch (no loader), and the loop under
torch.profiler (top host-side rows: DataLoader waits, syncs, copies).

    python3 benchmarks/loop_probe.py --base MODEL --data PREPARED --batch 8 --out probe.txt
"""

from __future__ import annotations

import argparse
import time

import torch

from whisper_tune.config import load_train_config
from whisper_tune.features import batch_to
from whisper_tune.training import TrainingRun


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Stepping:
    """The run's optimizer step, telling the profiler where each step ends."""

    def __init__(self, step, prof):
        self.step, self.prof = step, prof

    def __call__(self, batches, n_micro):
        out = self.step(batches, n_micro)
        self.prof.step()
        return out

    def __getattr__(self, name):
        return getattr(self.step, name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--out", required=True)
    p.add_argument("--extra", nargs="*", default=[])
    args = p.parse_args()
    overrides = [
        f"model.base={args.base}",
        f"data.source={args.data}",
        "model.quantization=none",
        "model.gradient_checkpointing=0",
        f"train.batch_size={args.batch}",
        f"train.max_steps={args.steps}",
        f"train.num_workers={args.workers}",
        "train.save_every=100000",
        "train.log_every=20",
        f"train.output_dir=/tmp/probe-{args.batch}",
        "eval.every=-1",
        *args.extra,
    ]
    cfg = load_train_config("marathi-large-v2-int8", overrides)
    run = TrainingRun(cfg, progress=False)
    run.setup()
    lines = []
    acts = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else []
    )
    schedule = torch.profiler.schedule(wait=6, warmup=2, active=10, repeat=1)
    with torch.profiler.profile(activities=acts, schedule=schedule) as prof:
        run.step_fn = Stepping(run.step_fn, prof)
        result = run.fit()
    run.step_fn = run.step_fn.step
    lines.append(f"loop (profiled): steady {result.steady_samples_per_s:.1f} samples/s, batch {args.batch}")
    lines.append(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=70))
    # the loader alone (persistent workers, already started)
    run.order.set_position(0, 0)
    it, n, start = iter(run.loader), 0, time.perf_counter()
    for batch in it:
        n += len(batch["labels"])
        if n >= 40 * args.batch:
            break
    lines.append(f"loader alone: {n / (time.perf_counter() - start):.1f} samples/s")
    # the step alone on one real batch, no loader (as bench train, but asynchronous)
    run.order.set_position(0, 0)
    batch = batch_to(next(iter(run.loader)), run.log_mel, run.device)
    for sync_each in (False, True):
        sync()
        start = time.perf_counter()
        for _ in range(20):
            run.step_fn(iter([batch]), 1)
            if sync_each:
                sync()
        sync()
        rate = 20 * args.batch / (time.perf_counter() - start)
        lines.append(
            f"step alone on one real batch ({'sync each step' if sync_each else 'async'}): {rate:.1f} samples/s"
        )
    # the log-mel alone
    audio = torch.zeros(args.batch, 60000).to(run.device)
    sync()
    start = time.perf_counter()
    for _ in range(20):
        run.log_mel(audio)
    sync()
    lines.append(f"log-mel alone: {(time.perf_counter() - start) / 20 * 1000:.2f} ms per batch")
    text = "\n".join(lines)
    print(text)
    with open(args.out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
