"""The training loop: LoRA on a (quantized) Whisper base, with WER while it trains and
checkpoints that resume exactly.

Our own loop rather than Seq2SeqTrainer, for three things the Trainer makes hard: exact
resume (the batch order is a pure function of seed and epoch, the DataLoader never
touches the global RNG, and RNG states are checkpointed, so a resumed run reaches the
same adapter as an uninterrupted one), generation-based WER on an 8-bit base, and
checkpoints that hold only the adapter. Under ``torchrun``/``accelerate launch`` each rank
holds its own quantized copy on its own GPU and takes every world-size-th batch.

A run folder::

    config.yaml  run.json  metrics.jsonl  training.png  tensorboard/
    adapter/            final adapter (PeftModel.from_pretrained loads it) + processor
    best/               adapter with the best eval WER (or CER) + its scores
    checkpoints/step-N/ the last K checkpoints
    prepared/{train,eval}/  the prepared splits
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .config import TrainConfig, to_dict
from .errors import UserError
from .evaluation import generate_on
from .features import SpeechCollator
from .modeling import (
    amp_dtype,
    input_dtype,
    load_processor,
    lora_model,
    parameter_counts,
    pick_device,
    set_generation_language,
)
from .prepare import load_prepared, prepare_split
from .processor import resolve_language
from .reporting import MetricsLog, environment, peak_memory_gib, plot_run
from .run import RunDir, RunRecord, write_adapter_meta

log = logging.getLogger(__name__)

MEGABATCH = 50  # length grouping sorts within windows of 50 batches, as transformers' sampler does


class TrainingStopped(UserError):
    """The run stopped on purpose (non-finite loss, out of memory); the message says what to do."""


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    steps: int
    final_loss: float | None
    best: dict | None  # {"step", "wer", "cer"} of the best evaluation
    samples_per_s: float
    wall_s: float
    stopped_early: bool = False


# ---- data order ----------------------------------------------------------------------


def epoch_batches(
    durations: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool, world: int = 1, rank: int = 0
) -> list[list[int]]:
    """This rank's batches for ``epoch``: a pure function of its arguments, so a resumed run
    sees the same order. With ``group_by_length``, clips are sorted by duration inside
    windows of ``MEGABATCH`` batches, then the batches are shuffled."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(durations))
    if group_by_length:
        window = batch_size * MEGABATCH
        order = np.concatenate(
            [
                w[np.argsort(-durations[w], kind="stable")]
                for w in np.array_split(order, max(1, math.ceil(len(order) / window)))
            ]
        )
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    usable = len(batches) - len(batches) % world if len(batches) >= world else len(batches)
    return batches[:usable][rank::world]


# ---- distributed ---------------------------------------------------------------------


def _dist_setup() -> tuple[int, int, int]:
    """(world, rank, local_rank) from torchrun/accelerate's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend)
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def _all_finite(loss: torch.Tensor, world: int) -> bool:
    """Whether the loss is finite on every rank: a rank that skipped its backward pass alone
    would leave the others waiting in DDP's gradient all-reduce for ever."""
    finite = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    if world > 1:
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite.item())


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


# ---- the loop ------------------------------------------------------------------------


def make_optimizer(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused into one kernel on CUDA: the default per-tensor path spent 10 ms a step
    on large-v2's 256 small LoRA matrices, 3 % of a whole step."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type == "cuda")


def linear_schedule(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then linear decay to zero (the recipe's schedule)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps  # as transformers: the first step runs at lr 0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _oom_message(cfg: TrainConfig) -> str:
    return (
        f"out of GPU memory at batch_size {cfg.train.batch_size}: lower train.batch_size (and raise "
        f"train.grad_accum to keep the effective batch), set model.gradient_checkpointing=true, or use "
        f"model.quantization=nf4"
    )


def train(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None, progress: bool = True) -> TrainResult:
    """Run (or resume) the training described by ``cfg``; returns where the adapter is.

    ``stop_after`` ends the run after that many optimizer steps in total, leaving a
    checkpoint to ``resume`` from, with the schedule of the full run unchanged.
    """
    from tqdm.auto import tqdm

    world, rank, local_rank = _dist_setup()
    main_rank = rank == 0
    device = pick_device(local_rank)
    run_dir = Path(cfg.train.output_dir)
    ckpt_dir = run_dir / "checkpoints"
    resume_from = checkpoint.latest(ckpt_dir) if resume else None
    if not resume and checkpoint.finished(ckpt_dir):
        raise UserError(
            f"{run_dir} already holds checkpoints: pass --resume to continue, or choose another train.output_dir"
        )
    if main_rank:
        RunDir(run_dir).write_config(cfg)
    _seed_everything(cfg.train.seed)

    # The model first: a wrong base or a missing bitsandbytes fails before data work.
    processor = load_processor(cfg.model.base)
    model = lora_model(cfg.model, cfg.lora, device, compile=cfg.train.compile)
    language = resolve_language(cfg.data.language)
    set_generation_language(model, processor.tokenizer, language, cfg.data.task)
    trainable, total = parameter_counts(model)
    log.info(
        "trainable params: %s || all params: %s || trainable%%: %.4f",
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )

    processor_dir = run_dir / "processor"
    if main_rank:
        processor.save_pretrained(processor_dir)
        train_ds = prepare_split(cfg.data, cfg.data.train_split, run_dir / "prepared" / "train", str(processor_dir))
        eval_ds = (
            prepare_split(cfg.data, cfg.data.eval_split, run_dir / "prepared" / "eval", str(processor_dir))
            if cfg.eval.every >= 0
            else None
        )
    _barrier(world)
    if not main_rank:
        train_ds = load_prepared(run_dir / "prepared" / "train")
        eval_ds = None
    if len(train_ds) == 0:
        raise UserError(
            f"no usable training clips in {cfg.data.source} ({cfg.data.train_split}): "
            f"see {run_dir / 'prepared' / 'train' / 'rejected.jsonl'}"
        )

    durations = np.asarray(train_ds["duration"], dtype=np.float32)
    micro_per_epoch = len(epoch_batches(durations, cfg.train.batch_size, 0, 0, False, world, rank))
    if world > 1:
        log.info(
            "rank %d of %d on %s: %d batches of %d per epoch",
            rank,
            world,
            device,
            micro_per_epoch,
            cfg.train.batch_size,
        )
    if micro_per_epoch == 0:
        raise UserError(
            f"{len(train_ds)} clips make no batch of {cfg.train.batch_size} on {world} devices: lower train.batch_size"
        )
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.train.grad_accum)
    total_steps = cfg.train.max_steps or math.ceil(cfg.train.epochs * steps_per_epoch)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.train.learning_rate, cfg.train.weight_decay, device)
    scheduler = linear_schedule(optimizer, cfg.train.warmup_steps, total_steps)
    amp = amp_dtype(device, cfg.train.mixed_precision)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    step, epoch, micro_done, best = 0, 0, 0, None
    if resume_from is not None:
        state = checkpoint.load(resume_from, model)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        step, epoch, micro_done, best = state["step"], state["epoch"], state["micro_done"], state["best"]
        log.info("resuming from %s (step %d)", resume_from, step)
    elif resume:
        log.warning("no checkpoint in %s: starting from scratch", ckpt_dir)

    metrics = MetricsLog(run_dir, resume_step=step if resume_from else None) if main_rank else None
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    collate = SpeechCollator(processor.feature_extractor, _unwrap(model).config.decoder_start_token_id)
    data = train_ds.select_columns(["audio", "labels"]).with_format("numpy")
    feature_dtype = input_dtype(_unwrap(model))

    def evaluate_now() -> dict:
        result = generate_on(
            _unwrap(model),
            processor,
            eval_ds,
            language,
            cfg.data.task,
            cfg.eval.batch_size,
            cfg.eval.max_new_tokens,
            amp,
            cfg.eval.max_samples,
        )
        return {f"eval_{k}": v for k, v in result.scores().items()} | {"eval_clips_per_s": result.clips_per_s}

    def save_checkpoint() -> Path:
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "micro_done": micro_done,
            "best": best,
        }
        path = checkpoint.save(ckpt_dir, step, _unwrap(model), state)
        checkpoint.prune(ckpt_dir, cfg.train.keep_last)
        return path

    start, samples, window_loss, window_n, last_loss = time.perf_counter(), 0, 0.0, 0, None
    target = min(total_steps, stop_after) if stop_after else total_steps
    bar = tqdm(total=total_steps, initial=step, unit="step", desc="train", disable=not (progress and main_rank))
    model.train()
    try:
        while step < target:
            batches = epoch_batches(
                durations, cfg.train.batch_size, cfg.train.seed, epoch, cfg.train.group_by_length, world, rank
            )[micro_done:]
            loader = torch.utils.data.DataLoader(
                data,
                batch_sampler=batches,
                collate_fn=collate,
                num_workers=cfg.train.num_workers,
                generator=torch.Generator().manual_seed(cfg.train.seed),
                pin_memory=device.type == "cuda",
            )
            loader_iter = iter(loader)
            while step < target and micro_done < micro_per_epoch:
                n_micro = min(cfg.train.grad_accum, micro_per_epoch - micro_done)
                step_loss, step_samples, finite = 0.0, 0, True
                for _ in range(n_micro):
                    batch = next(loader_iter)
                    features = batch["input_features"].to(device, feature_dtype, non_blocking=True)
                    labels = batch["labels"].to(device, non_blocking=True)
                    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                        loss = model(input_features=features, labels=labels, use_cache=False).loss
                    if not _all_finite(loss, world):
                        finite = False
                        break
                    scaler.scale(loss / n_micro).backward()
                    step_loss += loss.item() / n_micro
                    step_samples += len(labels)
                micro_done += n_micro
                if not finite:
                    optimizer.zero_grad(set_to_none=True)
                    if cfg.train.on_nan == "stop":
                        last = checkpoint.latest(ckpt_dir)
                        raise TrainingStopped(
                            f"loss became {loss.item()} at step {step + 1}: stopped; last good checkpoint: "
                            f"{last or 'none yet'}. Lower train.learning_rate or use mixed_precision=bf16/no, "
                            f"then --resume; or set train.on_nan=skip to drop such batches"
                        )
                    log.warning("non-finite loss at step %d: batch skipped", step + 1)
                else:
                    if cfg.train.max_grad_norm > 0:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                samples += step_samples * world
                if finite:
                    window_loss, window_n, last_loss = window_loss + step_loss, window_n + 1, step_loss
                rate = samples / (time.perf_counter() - start)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{last_loss:.3f}" if last_loss is not None else "nan",
                    lr=f"{scheduler.get_last_lr()[0]:.2e}",
                    samples_s=f"{rate:.2f}",
                )
                end_of_epoch = micro_done >= micro_per_epoch
                record = {}
                if main_rank and (step % cfg.train.log_every == 0 or end_of_epoch or step == target):
                    if window_n:
                        record |= {"train_loss": window_loss / window_n}
                    record |= {
                        "lr": scheduler.get_last_lr()[0],
                        "samples_per_s": rate,
                        "epoch": epoch + micro_done / micro_per_epoch,
                    }
                    window_loss, window_n = 0.0, 0
                wants_eval = eval_ds is not None and (
                    (cfg.eval.every > 0 and step % cfg.eval.every == 0)
                    or (cfg.eval.every == 0 and end_of_epoch)
                    or step == total_steps
                )
                if main_rank and wants_eval:
                    scores = evaluate_now()
                    record |= scores
                    score = scores[f"eval_{cfg.eval.metric}"]
                    if best is None or score < best[cfg.eval.metric]:
                        best = {"step": step, "wer": scores["eval_wer"], "cer": scores["eval_cer"]}
                        _save_best(run_dir / "best", _unwrap(model), processor, best, cfg, language)
                if main_rank and record:
                    metrics.log({"step": step} | record)
                if end_of_epoch:
                    epoch, micro_done = epoch + 1, 0
                if main_rank and (step % cfg.train.save_every == 0 or step == target):
                    save_checkpoint()
                _barrier(world)
                if end_of_epoch:
                    break  # a new epoch needs a new batch order and loader
            del loader_iter, loader
    except torch.OutOfMemoryError:
        raise TrainingStopped(_oom_message(cfg)) from None
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    wall = time.perf_counter() - start
    adapter_dir = run_dir / "adapter"
    if main_rank and step >= total_steps:
        _unwrap(model).save_pretrained(adapter_dir)
        processor.save_pretrained(adapter_dir)
        write_adapter_meta(adapter_dir, cfg.model, language, cfg.data.task)
    result = TrainResult(
        run_dir,
        adapter_dir,
        step,
        last_loss,
        best,
        samples / wall if wall else 0.0,
        wall,
        stopped_early=step < total_steps,
    )
    if main_rank:
        plot_run(run_dir)
        _write_run_json(run_dir, cfg, device, result, trainable, total, resume_from, world)
        if not result.stopped_early:
            from .export import write_adapter_card

            write_adapter_card(adapter_dir, cfg.model.base, language, cfg.data.task)
    return result


def _save_best(folder: Path, model, processor, scores: dict, cfg: TrainConfig, language: str) -> None:
    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_adapter_meta(tmp, cfg.model, language, cfg.data.task)
        RunDir(folder.parent).write_best(tmp, scores)

    checkpoint.write_atomically(folder, fill)


def _write_run_json(
    run_dir: Path, cfg: TrainConfig, device, result: TrainResult, trainable: int, total: int, resumed_from, world: int
) -> None:
    record = RunRecord(
        config=to_dict(cfg),
        world_size=world,
        base_model=cfg.model.base,
        quantization=cfg.model.quantization,
        parameters={"trainable": trainable, "total": total, "trainable_percent": 100 * trainable / total},
        steps=result.steps,
        finished=not result.stopped_early,
        resumed_from=str(resumed_from) if resumed_from else None,
        final_train_loss=result.final_loss,
        best=result.best,
        samples_per_s=result.samples_per_s,
        wall_s=result.wall_s,
        environment=environment(device),
        extra=peak_memory_gib(device),
    )
    RunDir(run_dir).write_record(record)
