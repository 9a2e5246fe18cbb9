"""Issue 28's memory-capped table: the reference recipe against whisper-tune's auto choice
(``train.batch_size: auto``, ``model.gradient_checkpointing: auto``) on GPUs of 8, 16 and
24 GiB, emulated on one large card with ``torch.cuda.set_per_process_memory_fraction``.

For each architecture (random weights of its shape: speed and memory do not depend on the
values) and cap:

* **recipe**: LLM.int8, fp16 autocast, batch 8, every layer recomputed, LoRA r=32 on q/v
  (``bench.recipe_model``), accumulating to the same effective batch as the auto rows.
  It runs once, under the smallest cap it fits (a larger cap only allows more), in a
  process of its own;
* **auto, HOLDING**: the reference recipe's LoRA and optimizer on an int8-wo or bf16 base,
  compiled, with batch and recomputation chosen by ``fit.plan_for`` (the probe ``whisper-tune
  train`` runs, against a fresh plan cache), then timed. One process per holding runs every
  cap, largest first, on one model, so its compiled layers are built once; a candidate
  probed under a larger cap is not probed again under a smaller one (its peak does not
  depend on the cap, and out of memory stays out of memory), so the probe time of the
  smaller caps is what the larger cap left to measure.

Every row is timed on the same random batch (30 s inputs, ``bench.LABEL_TOKENS`` label
tokens) after one warm-up step; a row that runs out of memory says so in the table.

    python3 benchmarks/gpu_capped.py --archs large-v2 --out $OUT/capped        # on the GPU
    python3 benchmarks/gpu_capped.py --tiny --out /tmp/capped                   # dry run on a CPU

Writes ``capped-ARCHS.md`` and ``.json`` into ``--out`` after every row, so a run stopped
by a time limit keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from whisper_tune import bench, fit
from whisper_tune.errors import UserError
from whisper_tune.modeling import lora_model, pick_device
from whisper_tune.optimization import build_optimizer
from whisper_tune.reporting import environment

HOLDINGS = ("int8-wo", "none")  # none: bf16 on a GPU
GIB = 2**30


def recipe_row(folder: Path, cap_gib: float, effective: int, steps: int) -> dict:
    """The reference recipe under a cap, in this (fresh) process; accumulation keeps the
    effective batch (its samples/s is the same as at accumulation 1)."""
    device = pick_device()
    fit.apply_memory_cap(device, f"{cap_gib:g}GiB")
    row = bench.TrainRow.parse("recipe", recipe_batch=min(8, effective))
    try:
        result = bench.time_training(row, folder, steps, device, accum=max(1, effective // row.batch))
    except torch.OutOfMemoryError:
        return {"row": "recipe", "cap_gib": cap_gib, "out_of_memory": True}
    return result | {"row": "recipe", "cap_gib": cap_gib, "out_of_memory": False}


def auto_rows(
    folder: Path,
    holding: str,
    caps: list[float],
    effective: int,
    probe_steps: int,
    steps: int,
    cache: str,
    rows_so_far: Path,
) -> list[dict]:
    """Plan and time ``holding`` under each cap, largest first, on one model in this process;
    each row is also appended to ``rows_so_far`` as it is measured (a run stopped by a time
    limit keeps them)."""
    os.environ["WHISPER_TUNE_CACHE"] = cache
    device = pick_device()
    on_gpu = device.type == "cuda"
    overrides = [
        f"model.quantization={holding}",
        "model.gradient_checkpointing=auto",
        "train.batch_size=auto",
        f"train.effective_batch={effective}",
        f"train.compile={str(on_gpu).lower()}",
    ]
    cfg = bench.reference_config(folder, overrides)
    model = lora_model(cfg.model, cfg.lora, device, compile=cfg.train.compile)
    rows, measured = [], {}  # probes kept from cap to cap (fit.plan_for's measured)
    for cap in sorted(caps, reverse=True):
        capped = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, gpu_memory=f"{cap:g}GiB"))
        fit.release(device)
        fit.apply_memory_cap(device, capped.train.gpu_memory)
        start = time.perf_counter()
        try:
            plan = fit.plan_for(
                capped, model, device, bench.LABEL_TOKENS, probe_steps, probe_on_cpu=not on_gpu, measured=measured
            )
        except UserError as e:
            rows.append({"row": f"auto, {holding}", "cap_gib": cap, "error": str(e)})
        else:
            probe_s = time.perf_counter() - start
            fit.use_plan(model, plan)
            timed = time_plan(model, fit.resolved(capped, plan), plan, device, steps)
            rows.append({"row": f"auto, {holding}", "cap_gib": cap, "probe_s": probe_s, "plan": plan.to_dict()} | timed)
        with rows_so_far.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rows[-1]) + "\n")
    return rows


def time_plan(model, cfg, plan: fit.Plan, device: torch.device, steps: int) -> dict:
    """samples/s and peaks of ``steps`` optimizer steps of the plan (after one warm-up step)."""
    _, _, step = build_optimizer(model, cfg, total_steps=steps + 1, device=device)
    batch = fit.random_batch(model.config, plan.batch, bench.LABEL_TOKENS, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = {"batch": plan.batch, "grad_accum": plan.grad_accum, "checkpointing": plan.share, "out_of_memory": False}
    try:
        fit.timed_steps(step, batch, plan.grad_accum, 1, device)
        times, _ = fit.timed_steps(step, batch, plan.grad_accum, steps, device)
        result["samples_per_s"] = plan.effective_batch * steps / sum(times)
    except torch.OutOfMemoryError:
        result["out_of_memory"] = True
    if device.type == "cuda":
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / GIB
        result["peak_reserved_gpu_gib"] = torch.cuda.max_memory_reserved(device) / GIB
    step = batch = None
    fit.release(device)
    return result


def in_own_process(function, *args):
    with bench.row_process() as pool:
        return pool.submit(function, *args).result()


def run_arch(arch: str, args, table: dict, write) -> None:
    folder = args.work / f"random-{arch}"
    if not (folder / "config.json").exists():
        bench.save_random(arch, folder)
    for cap in sorted(args.caps) if args.recipe else []:  # the recipe: the smallest cap it runs under
        row = in_own_process(recipe_row, folder, cap, args.effective_batch, args.recipe_steps)
        table["rows"].append(row | {"arch": arch})
        write()
        if not row["out_of_memory"]:
            break
    for holding in args.holdings:
        cache = str(args.work / f"fit-cache-{arch}-{holding}")  # a fresh plan cache: every plan probed
        so_far = args.out / f"rows-{arch}-{holding}.jsonl"
        args.out.mkdir(parents=True, exist_ok=True)
        rows = in_own_process(
            auto_rows, folder, holding, args.caps, args.effective_batch, args.probe_steps, args.steps, cache, so_far
        )
        table["rows"] += [r | {"arch": arch} for r in rows]
        write()


def markdown(table: dict) -> list[str]:
    env = table["environment"]
    v = env["versions"]
    lines = [
        f"# Memory-capped training, {', '.join(table['archs'])}, on {env.get('gpu') or 'the CPU'}",
        "",
        f"`{table['command']}`",
        "",
        f"torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}, bitsandbytes {v['bitsandbytes']}. "
        f"Effective batch {table['effective_batch']} clips per optimizer step in every row; 30 s inputs, "
        f"{bench.LABEL_TOKENS} label tokens, LoRA r=32 on q/v. Caps set with "
        "torch.cuda.set_per_process_memory_fraction; peak = the allocator's reserved memory (what a cap holds). "
        "The recipe runs once, under the smallest cap it fits; auto rows are compiled, one process per holding "
        "runs its caps largest first, and a candidate probed under a larger cap is not probed again (probe s: "
        "the seconds of this cap's plan; tried: candidates it weighed, measured here or before).",
        "",
        "| arch | cap GiB | row | batch x accum | recomputed | samples/s | x recipe | peak GiB | probe s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    recipes = {r["arch"]: r for r in table["rows"] if r["row"] == "recipe" and not r["out_of_memory"]}
    for r in table["rows"]:
        lines.append(_line(r, recipes.get(r["arch"])))
    return lines


def _line(r: dict, recipe: dict | None) -> str:
    head = f"| {r['arch']} | {r['cap_gib']:g} | {r['row']} "
    if r.get("error"):
        return head + f"| – | – | does not fit: {r['error']} | | | |"
    if r["out_of_memory"]:
        return head + f"| {r.get('batch', 8)} x {r.get('grad_accum', '?')} | | **out of memory** | | | |"
    speed = r["samples_per_s"]
    ratio = f"{speed / recipe['samples_per_s']:.2f}" if recipe else "–"
    peak = r.get("peak_reserved_gpu_gib")
    probe = f"{r['probe_s']:.0f} ({len(r['plan']['probes'])} tried)" if "plan" in r else ""
    return (
        head + f"| {r['batch']} x {r['grad_accum']} | {r['checkpointing']:.0%} | {speed:.2f} | {ratio} "
        f"| {'–' if peak is None else f'{peak:.1f}'} | {probe} |"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["large-v2", "large-v3", "large-v3-turbo"])
    p.add_argument("--caps", nargs="+", type=float, default=[8, 16, 24], help="GiB")
    p.add_argument("--holdings", nargs="+", default=list(HOLDINGS))
    p.add_argument("--effective-batch", type=int, default=32, help="clips per optimizer step, every row")
    p.add_argument("--probe-steps", type=int, default=2, help="optimizer steps per probed candidate")
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per auto row")
    p.add_argument("--recipe-steps", type=int, default=2, help="timed optimizer steps of the recipe row")
    p.add_argument("--no-recipe", dest="recipe", action="store_false", help="leave the recipe row out")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/capped-work"), help="random checkpoints, plan caches")
    p.add_argument("--tiny", action="store_true", help="dry run: the tiny test architecture, one step each")
    args = p.parse_args(argv)
    if args.tiny:
        args.archs, args.effective_batch, args.probe_steps, args.steps, args.recipe_steps = ["tiny-test"], 2, 1, 1, 1
    args.work.mkdir(parents=True, exist_ok=True)
    table = {
        "command": " ".join(["python3", "benchmarks/gpu_capped.py", *(sys.argv[1:] if argv is None else argv)]),
        "archs": args.archs,
        "caps_gib": args.caps,
        "effective_batch": args.effective_batch,
        "rows": [],
        "environment": environment(pick_device()),
    }
    stem = "capped-" + "-".join(args.archs + ([] if args.holdings == list(HOLDINGS) else args.holdings))

    def write() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{stem}.json").write_text(json.dumps(table, indent=2))
        (args.out / f"{stem}.md").write_text("\n".join(markdown(table)) + "\n")
        print(markdown(table)[-1], flush=True)

    for arch in args.archs:
        run_arch(arch, args, table, write)
    print(f"written: {args.out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
