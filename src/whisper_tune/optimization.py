"""One optimizer step, as ``whisper-tune train`` runs it and ``whisper-tune bench train`` times
it: the same object in both, so a speed-up or a regression of the step shows in the
benchmark.

The step owns what happens between two batches of micro-batches: forward passes under
autocast, the scaled backward, the cross-rank check that the loss is finite (a rank that
skipped its backward alone would leave the others waiting in DDP's all-reduce), clipping
and the optimizer step. The learning-rate schedule and the data order are the training
run's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import math

import torch

from .config import TrainConfig
from .modeling import amp_dtype, input_dtype


def make_optimizer(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused into one kernel on CUDA: the default per-tensor path spent 10 ms a step
    on large-v2's 256 small LoRA matrices, 3 % of a whole step."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type == "cuda")


def lr_schedule(optimizer, warmup_steps: int, total_steps: int, shape: str = "linear") -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then ``shape`` (``config.LR_SCHEDULES``; the recipe's is linear decay to zero)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps  # as transformers: the first step runs at lr 0
        done = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if shape == "constant":
            return 1.0
        if shape == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * done))
        return 1.0 - done

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _all_finite(loss: torch.Tensor, world: int) -> bool:
    """Whether the loss is finite on every rank: a rank that skipped its backward pass alone
    would leave the others waiting in DDP's gradient all-reduce for ever."""
    finite = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    if world > 1:
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite.item())


def unwrap_ddp(model):
    """The model inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@dataclass
class StepOutcome:
    """What one optimizer step did."""

    loss: float  # mean training loss of the micro-batches (of those run, when not finite)
    samples: int  # clips this rank trained on
    finite: bool  # False: a non-finite loss on some rank; the step was skipped
    bad_loss: float | None = None  # the non-finite value, for the message


class OptimizerStep:
    """One optimizer step over ``n_micro`` micro-batches: forward under autocast, scaled
    backward, the cross-rank finiteness check, clipping, the (scaled) optimizer step.

    ``whisper-tune train`` and ``whisper-tune bench train`` both call this object, so the
    benchmark times the code users run. The learning-rate schedule is the caller's (it
    advances on skipped steps too).
    """

    def __init__(self, model, optimizer, amp: torch.dtype | None, max_grad_norm: float, world: int = 1):
        self.model, self.optimizer, self.amp = model, optimizer, amp
        self.max_grad_norm, self.world = max_grad_norm, world
        self.device = next(p for p in model.parameters()).device
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.feature_dtype = input_dtype(unwrap_ddp(model))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == torch.float16)

    def _loss(self, batch: dict) -> torch.Tensor:
        features = batch["input_features"].to(self.device, self.feature_dtype, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        mask = batch.get("attention_mask")  # present when SpecAugment is on: its masks stay on speech
        mask = None if mask is None else mask.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            return self.model(input_features=features, labels=labels, attention_mask=mask, use_cache=False).loss

    def __call__(self, batches: Iterator[dict], n_micro: int) -> StepOutcome:
        """Consume ``n_micro`` batches from ``batches`` (fewer when a loss is not finite)."""
        loss_sum, samples = 0.0, 0
        for _ in range(n_micro):
            batch = next(batches)
            loss = self._loss(batch)
            if not _all_finite(loss, self.world):
                self.optimizer.zero_grad(set_to_none=True)
                return StepOutcome(loss_sum, samples, False, loss.item())
            self.scaler.scale(loss / n_micro).backward()
            loss_sum += loss.item() / n_micro
            samples += len(batch["labels"])
        if self.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return StepOutcome(loss_sum, samples, True)


def build_optimizer(model, cfg: TrainConfig, total_steps: int, device: torch.device, world: int = 1):
    """(optimizer, schedule, step) for the trainable parameters of ``model``, as ``cfg`` says."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.train.learning_rate, cfg.train.weight_decay, device)
    scheduler = lr_schedule(optimizer, cfg.train.warmup_steps, total_steps, cfg.train.lr_schedule)
    amp = amp_dtype(device, cfg.train.mixed_precision)
    return optimizer, scheduler, OptimizerStep(model, optimizer, amp, cfg.train.max_grad_norm, world)
