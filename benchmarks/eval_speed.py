"""Evaluation speed: the recipe's loop (8-bit base + unmerged adapter, fp16 autocast) next
to whisper-tune's fast path (adapter merged into a half-precision base), same clips, one
process.

    python benchmarks/eval_speed.py --arch large-v2 --data demo-output/corpus/mr --clips 64 --new-tokens 64

Random weights of the named architecture with a random LoRA adapter (r=32 on q/v): speed
does not depend on the values, but generation length does, so every clip generates exactly
``--new-tokens`` tokens (min = max). Each configuration runs once on one batch to warm up,
then on all clips. Prints one line per row; writes JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_step import save_random  # noqa: E402

from whisper_tune.config import DataConfig, ModelConfig  # noqa: E402
from whisper_tune.evaluation import generate_on  # noqa: E402
from whisper_tune.modeling import load_for_inference, pick_device, write_adapter_meta  # noqa: E402
from whisper_tune.prepare import prepare_split  # noqa: E402
from whisper_tune.processor import build_processor  # noqa: E402
from whisper_tune.reporting import environment  # noqa: E402

_STARTED = time.perf_counter()


def stage(message: str) -> None:
    """Progress on stderr with elapsed seconds, so a slow stage shows itself."""
    print(f"[{time.perf_counter() - _STARTED:7.1f} s] {message}", file=sys.stderr, flush=True)


def random_adapter(base: Path, out: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(base, dtype=torch.float16)
    lora = LoraConfig(r=32, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(out)
    write_adapter_meta(out, ModelConfig(base=str(base), quantization="int8"), "mr", "transcribe")
    del model
    gc.collect()


def run(loaded, dataset, batch: int, amp, new_tokens: int) -> float:
    kwargs = {"min_new_tokens": new_tokens, "max_new_tokens": new_tokens}
    generate_on(
        loaded.model,
        loaded.processor,
        dataset,
        "mr",
        batch_size=batch,
        amp=amp,
        max_samples=batch,
        generate_kwargs=kwargs,
    )  # warm-up
    result = generate_on(
        loaded.model, loaded.processor, dataset, "mr", batch_size=batch, amp=amp, generate_kwargs=kwargs
    )
    return result.clips_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="large-v2")
    parser.add_argument("--data", default="demo-output/corpus/mr")
    parser.add_argument("--split", default="train")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--fast-batches", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    device = pick_device()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base, adapter = Path(tmp) / "base", Path(tmp) / "adapter"
        stage(f"random {args.arch} weights")
        save_random(args.arch, base)
        build_processor(base)
        stage("random adapter")
        random_adapter(base, adapter)
        stage("prepare clips")
        dataset = prepare_split(
            DataConfig(source=args.data, language="mr"), args.split, Path(tmp) / "prepared", str(base), progress=False
        )
        dataset = dataset.select(range(min(args.clips, len(dataset))))
        stage(f"{len(dataset)} clips ready")
        configs = [("recipe: int8 base + adapter, fp16 autocast", True, 8, torch.float16)]
        configs += [("whisper-tune evaluate: merged", False, b, None) for b in args.fast_batches]
        for label, exact, batch, amp in configs:
            if not rows or rows[-1]["exact"] != exact:
                loaded = None
                gc.collect()
                torch.cuda.empty_cache() if device.type == "cuda" else None
                stage(f"load ({'exact' if exact else 'merged'})")
                loaded = load_for_inference(str(base), str(adapter), device, exact=exact)
            stage(f"generate: {label}, batch {batch}")
            clips_per_s = run(loaded, dataset, batch, amp, args.new_tokens)
            dtype = str(next(loaded.model.parameters()).dtype).replace("torch.", "")
            label = label if exact else f"{label} ({dtype})"
            rows.append(
                {
                    "path": label,
                    "exact": exact,
                    "batch": batch,
                    "clips_per_s": clips_per_s,
                    "mode": loaded.mode,
                    "dtype": dtype,
                }
            )
            print(f"{label}, batch {batch}: {clips_per_s:.2f} clips/s", flush=True)
    env = environment(device)
    base_rate = rows[0]["clips_per_s"]
    for r in rows:
        r["speedup_vs_recipe"] = r["clips_per_s"] / base_rate
    result = {
        "command": "python " + " ".join(sys.argv),
        "arch": args.arch,
        "clips": len(dataset),
        "new_tokens": args.new_tokens,
        "rows": rows,
        "environment": env,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"eval_speed-{args.arch}-{'gpu' if 'gpu' in env else 'cpu'}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    v = env["versions"]
    lines = [
        f"# Evaluation speed, {args.arch} architecture, on {env.get('gpu') or 'cpu'}",
        "",
        f"`{result['command']}`",
        "",
        f"torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}, bitsandbytes {v['bitsandbytes']}; "
        f"{len(dataset)} clips, exactly {args.new_tokens} new tokens each, one process",
        "",
        "| path | batch | clips/s | x recipe |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['path']} | {r['batch']} | {r['clips_per_s']:.2f} | {r['speedup_vs_recipe']:.1f} |" for r in rows]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
