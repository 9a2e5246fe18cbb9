"""`whisper-tune` with one piece of the issue 18 loop switched back, to find what a 2-GPU
slow-down comes from (an A/B tool for benchmarks/gpu_ddp_ab.sh, not a user option):

    torchrun --nproc_per_node 2 benchmarks/ddp_variant.py VARIANT train --config ...

VARIANT: main (as shipped) | no-bucket-view (DDP copies gradients into its buckets) |
host-skip (the step reads the skip flag on the host instead of fused AdamW's found_inf).
"""

import sys

import torch

import whisper_tune.optimization as optimization
import whisper_tune.training as training
from whisper_tune.cli import main


def no_bucket_view(model, device):
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, ids, gradient_as_bucket_view=False)


VARIANTS = {
    "main": lambda: None,
    "no-bucket-view": lambda: setattr(training, "_ddp", no_bucket_view),
    "host-skip": lambda: setattr(optimization.OptimizerStep, "skips_on_device", property(lambda self: False)),
}

if __name__ == "__main__":
    VARIANTS[sys.argv.pop(1)]()
    sys.exit(main(sys.argv[1:]))
