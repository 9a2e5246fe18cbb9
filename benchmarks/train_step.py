"""Training speed and memory per quantization mode, side by side in one process.

    python benchmarks/train_step.py --arch base --modes int8 nf4 none --batch 8 --steps 3

Random weights of the named Whisper architecture (speed and memory do not depend on the
values), 30 s inputs, 40 label tokens, LoRA r=32 on q/v, whisper-tune's own model loading
(``modeling.load_base`` + ``add_lora``). Prints one line per mode and writes JSON and a
markdown table to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import torch

from whisper_tune.config import LoraSettings, ModelConfig
from whisper_tune.modeling import ARCHITECTURES, add_lora, amp_dtype, architecture_config, load_base, pick_device
from whisper_tune.reporting import environment, peak_memory_gib


def save_random(arch: str, folder: Path) -> None:
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration(architecture_config(arch))
    model.half().save_pretrained(folder)  # fp16 on disk: half the bytes


def measure(folder: Path, mode: str, batch: int, steps: int, checkpointing: bool) -> dict:
    device = pick_device()
    cfg = ModelConfig(base=str(folder), quantization=mode, gradient_checkpointing=checkpointing)
    model = add_lora(load_base(cfg, device), LoraSettings(r=32, alpha=64, dropout=0.05, targets="qv"), cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    amp = amp_dtype(device)
    features = torch.randn(batch, 80, 3000, device=device)
    labels = torch.randint(0, 50000, (batch, 40), device=device)
    model.train()
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first_peak = None
    for i in range(steps + 1):  # the first step warms up and is not timed
        if i == 1 and device.type == "cuda":  # LLM.int8's first step allocates far more than later ones
            first_peak = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.reset_peak_memory_stats(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = model(input_features=features, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step_s = sum(times[1:]) / steps
    row = {
        "mode": mode,
        "batch": batch,
        "checkpointing": checkpointing,
        "step_s": step_s,
        "samples_per_s": batch / step_s,
        "first_step_s": times[0],
    } | peak_memory_gib(device)
    if first_peak is not None:  # peak_gpu_gib is then the steady peak after the first step
        row["first_step_peak_gpu_gib"] = first_peak
    del model, optimizer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="base", choices=ARCHITECTURES)
    parser.add_argument("--modes", nargs="+", default=["int8", "nf4", "none"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    import sys

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        save_random(args.arch, Path(tmp))
        for mode in args.modes:
            row = measure(Path(tmp), mode, args.batch, args.steps, not args.no_checkpointing)
            rows.append(row)
            print(
                f"{args.arch} {mode:5s} batch {args.batch}: {row['step_s']:.3f} s/step, "
                f"{row['samples_per_s']:.2f} samples/s",
                flush=True,
            )
    env = environment(pick_device())
    where = env.get("gpu") or f"cpu x{env.get('cpu_threads')}"
    result = {"command": "python " + " ".join(sys.argv), "arch": args.arch, "rows": rows, "environment": env}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"train_step-{args.arch}-{'gpu' if 'gpu' in env else 'cpu'}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    mem_key = "peak_gpu_gib" if "gpu" in env else "peak_rss_gib"
    lines = [
        f"# Training step, {args.arch} architecture, on {where}",
        "",
        f"`{result['command']}`",
        "",
        f"torch {env['versions']['torch']}, transformers {env['versions']['transformers']}, "
        f"peft {env['versions']['peft']}, bitsandbytes {env['versions']['bitsandbytes']}",
        "",
        "Peak memory on the CPU is the process's peak RSS so far (rows run in order); on a GPU it is "
        "torch's peak allocation for that row.",
        "",
        f"| mode | batch | checkpointing | s/step | samples/s | {mem_key} |",
        "|---|---|---|---|---|---|",
    ]
    if "gpu" in env:
        lines[-2:] = [
            "| mode | batch | checkpointing | s/step | samples/s | peak GiB, first step | peak GiB, later steps |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['mode']} | {r['batch']} | {r['checkpointing']} | {r['step_s']:.3f} | {r['samples_per_s']:.2f} "
            f"| {r['first_step_peak_gpu_gib']:.1f} | {r['peak_gpu_gib']:.1f} |"
            for r in rows
        ]
    else:
        lines += [
            f"| {r['mode']} | {r['batch']} | {r['checkpointing']} | {r['step_s']:.3f} | "
            f"{r['samples_per_s']:.2f} | {r[mem_key]:.2f} |"
            for r in rows
        ]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
