"""One optimizer step, as ``whisper-tune train`` runs it and ``whisper-tune bench train`` times
it: the same object in both, so a speed-up or a regression of the step shows in the
benchmark.

The step owns what happens between two batches of micro-batches: forward passes under
autocast, the scaled backward (gradients all-reduced by DDP on the last micro-batch only),
one cross-rank reduction of the loss and a "non-finite" flag, clipping and the optimizer
step. The learning-rate schedule and the data order are the training run's.

Nothing in a step waits for the GPU. The loss stays a device tensor and the non-finite
flag goes to the fused optimizer as its ``found_inf`` (the way ``GradScaler`` skips an
fp16 step), so a bad step is skipped on the device; :class:`PendingSteps` reads losses
and flags back in one transfer when the run logs or saves. Each host read (``.item()``)
is a full stop of every GPU: per micro-batch, as before, it cost two GPUs about 5 % of
their speed-up. Where the optimizer cannot skip on the device (fp16's scaler, an unfused
optimizer) the step reads the flag once and skips on the host instead.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .config import TrainConfig
from .modeling import amp_dtype, input_dtype


def make_optimizer(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused into one kernel on CUDA and the CPU: the default per-tensor path spent
    10 ms a step on large-v2's 256 small LoRA matrices, 3 % of a whole step, and only the
    fused kernel takes a device-side ``found_inf`` that skips a bad step without a sync."""
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


def lr_schedule(
    optimizer, warmup_steps: int, total_steps: int, shape: str = "linear"
) -> torch.optim.lr_scheduler.LambdaLR:
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


def unwrap_ddp(model):
    """The model inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@dataclass
class StepOutcome:
    """What one optimizer step did, as device tensors (reading them waits for the GPU:
    :class:`PendingSteps` does it for many steps at once)."""

    loss: torch.Tensor  # mean training loss of the micro-batches over all ranks (non-finite when skipped)
    samples: int  # clips this rank trained on
    skipped: torch.Tensor  # 1.0: a non-finite loss or gradient on some rank; no update was applied


class OptimizerStep:
    """One optimizer step over ``n_micro`` micro-batches: forward under autocast, scaled
    backward (DDP's all-reduce only on the last micro-batch: ``no_sync`` on the others), one
    all-reduce of the loss and the non-finite flag, clipping, the (scaled) optimizer step,
    skipped on every rank alike when any rank saw a non-finite loss or the gradient norm is
    not finite.

    Every rank runs every backward, finite or not, so no rank is left waiting in DDP's
    all-reduce for one that stopped early. ``whisper-tune train`` and ``whisper-tune bench
    train`` both call this object, so the benchmark times the code users run. The
    learning-rate schedule is the caller's (it advances on skipped steps too).
    """

    def __init__(
        self,
        model,
        optimizer,
        amp: torch.dtype | None,
        max_grad_norm: float,
        world: int = 1,
        label_smoothing: float = 0.0,
    ):
        self.model, self.optimizer, self.amp = model, optimizer, amp
        self.max_grad_norm, self.world, self.label_smoothing = max_grad_norm, world, label_smoothing
        self.device = next(p for p in model.parameters()).device
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.feature_dtype = input_dtype(unwrap_ddp(model))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == torch.float16)

    @property
    def skips_on_device(self) -> bool:
        """Whether a bad step is skipped by the optimizer itself (fused AdamW's ``found_inf``),
        with no host sync; fp16's scaler owns ``found_inf`` itself, so not under fp16."""
        return getattr(self.optimizer, "_step_supports_amp_scaling", False) and not self.scaler.is_enabled()

    def _loss(self, batch: dict) -> torch.Tensor:
        features = batch["input_features"].to(self.device, self.feature_dtype, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        extra = {}  # the frames that are speech, when SpecAugment is on: its masks then fall on speech
        if batch.get("attention_mask") is not None:  # left where it is: SpecAugment reads it on the host
            extra["attention_mask"] = batch["attention_mask"]
        if "decoder_input_ids" in batch:  # prompted rows (preserve.prompt_share): the labels are masked on the prompt
            extra["decoder_input_ids"] = batch["decoder_input_ids"].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            out = self.model(input_features=features, labels=labels, use_cache=False, **extra)
        if not self.label_smoothing:
            return out.loss
        return torch.nn.functional.cross_entropy(  # transformers' loss, with the targets smoothed
            out.logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, label_smoothing=self.label_smoothing
        )

    def _no_sync(self, last: bool):
        """DDP's ``no_sync`` on all but the last micro-batch: gradients accumulate locally and
        are all-reduced once per step, not once per micro-batch."""
        ddp = isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
        return self.model.no_sync() if ddp and not last else contextlib.nullcontext()

    def _backward(self, batches: Iterator[dict], n_micro: int) -> tuple[torch.Tensor, int]:
        """Forward and backward over ``n_micro`` micro-batches: (summed mean loss, clips)."""
        loss_sum, samples = torch.zeros((), device=self.device), 0
        for i in range(n_micro):
            batch = next(batches)
            with self._no_sync(last=i == n_micro - 1):
                loss = self._loss(batch)
                self.scaler.scale(loss / n_micro).backward()
            loss_sum += loss.detach().float() / n_micro
            samples += len(batch["labels"])
        return loss_sum, samples

    def _check(self, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss over ranks, 1.0 when this step must not update): a non-finite loss on
        any rank (it reaches every rank in the same all-reduce as the loss) or a non-finite
        gradient norm (of the all-reduced gradients, so every rank sees the same norm)."""
        stats = torch.stack([loss, (~torch.isfinite(loss)).float()])
        if self.world > 1:
            torch.distributed.all_reduce(stats)
        bad = (stats[1] > 0).float()
        self.scaler.unscale_(self.optimizer)  # a no-op without fp16's scaler
        if self.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            bad = torch.maximum(bad, (~torch.isfinite(norm)).float())
        return stats[0] / self.world, bad

    def __call__(self, batches: Iterator[dict], n_micro: int) -> StepOutcome:
        """Consume ``n_micro`` batches from ``batches``; never waits for the device when the
        optimizer can skip a bad step itself (:attr:`skips_on_device`)."""
        loss, samples = self._backward(batches, n_micro)
        loss, bad = self._check(loss)
        if self.skips_on_device:
            self.optimizer.found_inf, self.optimizer.grad_scale = bad, None
            self.optimizer.step()
        else:
            if not bad.item():
                self.scaler.step(self.optimizer)
            self.scaler.update()  # also forgets a skipped step's unscale_ (and lowers an overflowing fp16 scale)
        # under DDP the gradients are views of its all-reduce buckets: zeroed, not freed
        ddp = isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
        self.optimizer.zero_grad(set_to_none=not ddp)
        return StepOutcome(loss, samples, bad)


class PendingSteps:
    """The losses and skip flags of the steps since the last read, kept on the device and
    read back in one transfer (:meth:`read`) when the run logs, evaluates or saves."""

    def __init__(self):
        self.steps: list[tuple[int, StepOutcome]] = []

    def add(self, step: int, outcome: StepOutcome) -> None:
        self.steps.append((step, outcome))

    def read(self) -> list[tuple[int, float, bool]]:
        """(step, loss, skipped) of each pending step, oldest first; empties the list."""
        if not self.steps:
            return []
        values = torch.stack([torch.stack([o.loss, o.skipped]) for _, o in self.steps]).tolist()
        read = [(step, loss, bool(skipped)) for (step, _), (loss, skipped) in zip(self.steps, values)]
        self.steps = []
        return read


def build_optimizer(model, cfg: TrainConfig, total_steps: int, device: torch.device, world: int = 1):
    """(optimizer, schedule, step) for the trainable parameters of ``model``, as ``cfg`` says."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.train.learning_rate, cfg.train.weight_decay, device)
    scheduler = lr_schedule(optimizer, cfg.train.warmup_steps, total_steps, cfg.train.lr_schedule)
    amp = amp_dtype(device, cfg.train.mixed_precision, training=True)
    step = OptimizerStep(model, optimizer, amp, cfg.train.max_grad_norm, world, cfg.train.label_smoothing)
    return optimizer, scheduler, step
