"""Where does a compiled fp8 training step spend its GPU time, next to bf16? A large-v2-wide
Whisper cut to 4+4 layers, one profiled step per row, the top kernels by GPU time; and the
raw _scaled_mm variants (fast accumulation, fused bias) at large-v2's fc1 shape.

    python benchmarks/fp8_profile.py [ROW ...]      (rows as in bench train: fp8/16/1/compile)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch


def _ms(fn, steps=10):
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


def scaled_mm_variants(rows=48000, k=1280, n=5120) -> None:
    a = torch.randn(rows, k, device="cuda").to(torch.float8_e4m3fn)
    b = torch.randn(n, k, device="cuda").to(torch.float8_e4m3fn).t()
    sa, sb = torch.rand(rows, 1, device="cuda"), torch.rand(1, n, device="cuda")
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    flops = 2 * rows * k * n
    cases = {
        "bf16 addmm": lambda: torch.nn.functional.linear(x, w, bias),
        "fp8 rowwise": lambda: torch._scaled_mm(a, b, sa, sb, out_dtype=torch.bfloat16),
        "fp8 rowwise fast": lambda: torch._scaled_mm(a, b, sa, sb, out_dtype=torch.bfloat16, use_fast_accum=True),
        "fp8 rowwise fast+bias": lambda: torch._scaled_mm(
            a, b, sa, sb, bias=bias, out_dtype=torch.bfloat16, use_fast_accum=True
        ),
        "fp8 tensorwise fast": lambda: torch._scaled_mm(
            a, b, sa[:1, :1].reshape(()), sb[:1, :1].reshape(()), out_dtype=torch.bfloat16, use_fast_accum=True
        ),
    }
    for name, fn in cases.items():
        try:
            ms = _ms(fn)
            print(f"{name:24s} {ms:6.3f} ms {flops / ms / 1e9:6.0f} TFLOP/s", flush=True)
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"{name:24s} fails: {str(e).splitlines()[0][:150]}", flush=True)


def profile_rows(specs: list[str]) -> None:
    from transformers import WhisperForConditionalGeneration

    from whisper_tune.bench import LABEL_TOKENS, TrainRow, _row_model
    from whisper_tune.modeling import architecture_config

    folder = Path(tempfile.mkdtemp()) / "cut-large-v2"
    config = architecture_config("large-v2")
    config.encoder_layers = config.decoder_layers = 4
    WhisperForConditionalGeneration(config).half().save_pretrained(folder)
    for spec in specs:
        row = TrainRow.parse(spec)
        model, step = _row_model(row, folder, torch.device("cuda"))
        g = torch.Generator().manual_seed(0)
        batch = {
            "input_features": torch.randn(row.batch, 80, 3000, generator=g).cuda(),
            "labels": torch.randint(0, 50000, (row.batch, LABEL_TOKENS), generator=g).cuda(),
        }
        model.train()
        ms = _ms(lambda step=step, batch=batch: step(iter([batch]), 1), steps=3)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            step(iter([batch]), 1)
            torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if e.device_time_total > 0]
        total = sum(e.self_device_time_total for e in events) / 1e3
        print(f"== {spec}: {ms:.1f} ms/step wall, {total:.1f} ms kernels", flush=True)
        for e in sorted(events, key=lambda e: -e.self_device_time_total)[:14]:
            print(f"  {e.self_device_time_total / 1e3:7.2f} ms {e.count:5d}x {e.key[:90]}")
        del model, step
        torch.cuda.empty_cache()


if __name__ == "__main__":
    scaled_mm_variants()
    profile_rows(sys.argv[1:] or ["none/16/1/compile", "fp8/16/1/compile"])
