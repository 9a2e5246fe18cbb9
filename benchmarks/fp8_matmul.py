"""How fast is the fp8 holding's frozen Linear against a bf16 one, forward plus input gradient,
at large-v2's encoder shapes? Eager and compiled, one Linear alone and one encoder MLP block
(layer norm, fc1, GELU, fc2: where compile can fuse the quantization into its neighbours).

    python benchmarks/fp8_matmul.py [--batch 8] [--out fp8_matmul.json]     (a GPU with fp8)

Prints one line per case (ms per forward+backward, TFLOP/s of the matmuls, fp8 / bf16 speed)
and writes JSON. The weights are frozen in both, as in LoRA training: the backward computes
only the input gradient.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from whisper_tune.quantization import Fp8Linear

D_MODEL, FFN, FRAMES = 1280, 5120, 1500  # large-v2: d_model, encoder MLP width, encoder frames of 30 s


class Block(torch.nn.Module):
    """An encoder MLP block as Whisper has it: x + fc2(gelu(fc1(layer_norm(x))))."""

    def __init__(self, fc1, fc2):
        super().__init__()
        self.norm = torch.nn.LayerNorm(D_MODEL, device="cuda", dtype=torch.bfloat16)
        self.fc1, self.fc2 = fc1, fc2

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


def _linear(n_in, n_out, fp8):
    layer = torch.nn.Linear(n_in, n_out, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
    return Fp8Linear(layer) if fp8 else layer


def _time(module, x, steps=20):
    """Milliseconds per forward + input-gradient backward, after warm-up (and compile)."""
    grad = torch.randn_like(module(x))
    for _ in range(3):
        torch.autograd.grad(module(x), x, grad)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        torch.autograd.grad(module(x), x, grad)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", default="fp8_matmul.json")
    args = parser.parse_args()
    rows = args.batch * FRAMES
    cases = {
        "fc1 1280->5120": (lambda fp8: _linear(D_MODEL, FFN, fp8), D_MODEL, 2 * rows * D_MODEL * FFN),
        "fc2 5120->1280": (lambda fp8: _linear(FFN, D_MODEL, fp8), FFN, 2 * rows * D_MODEL * FFN),
        "q 1280->1280": (lambda fp8: _linear(D_MODEL, D_MODEL, fp8), D_MODEL, 2 * rows * D_MODEL * D_MODEL),
        "mlp block": (
            lambda fp8: Block(_linear(D_MODEL, FFN, fp8), _linear(FFN, D_MODEL, fp8)),
            D_MODEL,
            4 * rows * D_MODEL * FFN,
        ),
    }
    results = []
    for name, (make, width, flops) in cases.items():
        x = torch.randn(rows, width, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for compiled in (False, True):
            ms = {}
            for kind in ("bf16", "fp8"):
                module = make(kind == "fp8")
                ms[kind] = _time(torch.compile(module) if compiled else module, x)
            row = {"case": name, "rows": rows, "compiled": compiled, "bf16_ms": ms["bf16"], "fp8_ms": ms["fp8"]}
            row |= {"bf16_tflops": 2 * flops / ms["bf16"] / 1e9, "fp8_tflops": 2 * flops / ms["fp8"] / 1e9}
            row["fp8_speedup"] = ms["bf16"] / ms["fp8"]
            results.append(row)
            print(
                f"{name:15s} {'compiled' if compiled else 'eager   '} bf16 {ms['bf16']:7.3f} ms "
                f"({row['bf16_tflops']:5.0f} TFLOP/s)  fp8 {ms['fp8']:7.3f} ms ({row['fp8_tflops']:5.0f} TFLOP/s)  "
                f"x{row['fp8_speedup']:.2f}",
                flush=True,
            )
    device = torch.cuda.get_device_name()
    with open(args.out, "w") as f:
        json.dump({"device": device, "torch": torch.__version__, "batch": args.batch, "cases": results}, f, indent=2)


if __name__ == "__main__":
    main()
