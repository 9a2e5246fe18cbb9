"""Where does the fp8 holding's time go? Each piece of one frozen fp8 Linear timed alone, at
large-v2's encoder shapes: the bf16 matmul it replaces, ``torch._scaled_mm`` with tensor-wise
and row-wise scales, with and without fast accumulation, the activation quantization
(row-wise dynamic, as :class:`whisper_tune.quantization.Fp8Linear` does it, and tensor-wise
with a known scale), and the transposed copy of the fp8 weight the backward makes.

    python benchmarks/fp8_gemm_modes.py [--batch 8] [--out fp8_gemm_modes.json]   (a GPU with fp8)

Prints one line per (shape, piece) with its microseconds and TFLOP/s, and writes JSON.
"""

from __future__ import annotations

import argparse
import json

import torch

from whisper_tune.quantization import E4M3, _quantize_rows_eager

D_MODEL, FFN, FRAMES = 1280, 5120, 1500


def _us(fn, steps=50) -> float:
    """Median microseconds of ``fn`` on the GPU (CUDA events, after warm-up)."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[len(times) // 2]


def _quantize_tensorwise(t: torch.Tensor, inv_scale: torch.Tensor) -> torch.Tensor:
    return (t.float() * inv_scale).clamp(-448.0, 448.0).to(E4M3)


def _pieces(m, k, n, quant_rows, quant_tensor) -> dict:
    """Each piece of one (m x k) @ (k x n) fp8 Linear, as (callable, its FLOPs)."""
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    qa, qw = (a / 8).to(E4M3), (w / 8).to(E4M3)  # row-major (m, k); (n, k) so qw.t() is column-major
    one = torch.ones((), device="cuda")
    row_a, row_b = torch.ones(m, 1, device="cuda"), torch.ones(1, n, device="cuda")
    col = torch.ones(k, device="cuda")
    flops = 2 * m * k * n

    def scaled(scale_a, scale_b, fast):
        return lambda: torch._scaled_mm(qa, qw.t(), scale_a, scale_b, out_dtype=torch.bfloat16, use_fast_accum=fast)

    scales = {"tensorwise": (one, one), "rowwise": (row_a, row_b)}
    return {
        "bf16 mm": (lambda: a @ w.t(), flops),
        **{
            f"fp8 {mode} {'fast' if fast else 'exact'}": (scaled(*pair, fast), flops)
            for mode, pair in scales.items()
            for fast in (True, False)
        },
        "quantize rows (dynamic)": (lambda: quant_rows(a), 0),
        "quantize rows x col scale": (lambda: quant_rows(a, col), 0),
        "quantize tensorwise (known scale)": (lambda: quant_tensor(a, one), 0),
        "fp8 weight transpose copy": (lambda: qw.t().contiguous().t(), 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", default="fp8_gemm_modes.json")
    args = parser.parse_args()
    m = args.batch * FRAMES
    quant_rows = torch.compile(_quantize_rows_eager, dynamic=False)
    quant_tensor = torch.compile(_quantize_tensorwise, dynamic=False)
    shapes = {  # (K, N): activation rows x K times K x N
        "fc1 fwd / fc2 bgrad (1280->5120)": (D_MODEL, FFN),
        "fc2 fwd / fc1 bgrad (5120->1280)": (FFN, D_MODEL),
        "q fwd / bgrad (1280->1280)": (D_MODEL, D_MODEL),
    }
    rows = []
    for name, (k, n) in shapes.items():
        pieces = _pieces(m, k, n, quant_rows, quant_tensor)
        for piece, (fn, fl) in pieces.items():
            try:
                us = _us(fn)
            except RuntimeError as err:  # a mode this torch/cuBLAS lacks: say so, keep going
                print(f"{name:34s} {piece:34s} unavailable: {str(err).splitlines()[0]}", flush=True)
                rows.append({"shape": name, "piece": piece, "error": str(err).splitlines()[0]})
                continue
            tflops = fl / us / 1e6 if fl else None
            rows.append({"shape": name, "rows": m, "k": k, "n": n, "piece": piece, "us": us, "tflops": tflops})
            print(f"{name:34s} {piece:34s} {us:8.1f} us" + (f"  {tflops:6.0f} TFLOP/s" if tflops else ""), flush=True)
    with open(args.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
