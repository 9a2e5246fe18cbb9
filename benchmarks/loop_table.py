"""The table of ``gpu_loop.sh``: for each architecture and row, ``bench train``'s samples/s
(the optimizer step on a ready batch) next to ``whisper-tune train``'s steady samples/s
for each code tree, and the loop's share of the bench. Writes loop-vs-bench.md/.json.

    python3 benchmarks/loop_table.py RESULTS_DIR --command "..."
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TARGET = 0.85  # issue 17: the loop reaches at least 85 % of the bench's samples/s


def rows(results: Path) -> tuple[list[dict], dict]:
    """One entry per (architecture, row, code tree), and the bench's environment."""
    table, environment = [], {}
    for bench_file in sorted(results.glob("bench-*/train-*.json")):
        bench = json.loads(bench_file.read_text())
        environment = bench["environment"]
        for b in bench["rows"]:
            share = f"{b['checkpointing']:g}"
            stem = f"run-{bench['arch']}-{b['mode']}-{b['batch']}-{share}-"
            for run_file in sorted(results.glob(f"{stem}*.json")):
                run = json.loads(run_file.read_text())
                loop = run["steady_samples_per_s"]
                table.append(
                    {
                        "arch": bench["arch"],
                        "row": f"{b['mode']}/{b['batch']}/{share}",
                        "code": run_file.stem[len(stem) :],
                        "bench_samples_per_s": b["samples_per_s"],
                        "loop_samples_per_s": loop,
                        "loop_overall_samples_per_s": run["samples_per_s"],
                        "loop_vs_bench": loop / b["samples_per_s"] if loop else None,
                        "loop_steps": run["steps"],
                        "num_workers": run["config"]["train"]["num_workers"],
                        "loop_peak_gpu_gib": run.get("peak_gpu_gib"),
                        "bench_peak_gpu_gib": b.get("peak_gpu_gib"),
                    }
                )
    return table, environment


def markdown(table: list[dict], environment: dict, command: str) -> str:
    v = environment.get("versions", {})
    where = environment.get("gpu") or environment.get("cpu", "cpu")
    lines = [
        f"# Training loop vs `bench train`, on {where}",
        "",
        f"`{command}`",
        "",
        f"torch {v.get('torch')}, transformers {v.get('transformers')}, peft {v.get('peft')}",
        "",
        "bench: samples/s of the optimizer step on a ready batch already on the device (30 s inputs, 40 label "
        "tokens). loop: `whisper-tune train`'s steady samples/s (run.json) on the demo corpus, same LoRA "
        "(r=32 q/v), optimizer, quantization, batch and checkpointing; log-mel, data loading and the step "
        f"together. Target: loop >= {TARGET:.0%} of bench.",
        "",
        "| arch | row | code | workers | loop steps | bench samples/s | loop samples/s (steady) | loop/bench | "
        "loop overall samples/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        ratio = f"{r['loop_vs_bench']:.0%}" if r["loop_vs_bench"] is not None else "-"
        loop = f"{r['loop_samples_per_s']:.1f}" if r["loop_samples_per_s"] else "-"
        lines.append(
            f"| {r['arch']} | {r['row']} | {r['code']} | {r['num_workers']} | {r['loop_steps']} "
            f"| {r['bench_samples_per_s']:.1f} | {loop} | {ratio} | {r['loop_overall_samples_per_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("--command", default="bash benchmarks/gpu_loop.sh")
    args = p.parse_args()
    table, environment = rows(args.results)
    text = markdown(table, environment, args.command)
    (args.results / "loop-vs-bench.md").write_text(text)
    record = {"command": args.command, "target": TARGET, "rows": table, "environment": environment}
    (args.results / "loop-vs-bench.json").write_text(json.dumps(record, indent=2))
    print(text)


if __name__ == "__main__":
    main()
