"""The training loop: LoRA on a (quantized) Whisper base, with WER while it trains and
checkpoints that resume exactly.

Our own loop rather than Seq2SeqTrainer, for three things the Trainer makes hard: exact
resume (the batch order is a pure function of seed and epoch, the DataLoader never
touches the global RNG, and RNG states are checkpointed, so a resumed run reaches the
same adapter as an uninterrupted one), generation-based WER on an 8-bit base, and
checkpoints that hold only the adapter. Under ``torchrun``/``accelerate launch`` each rank
holds its own quantized copy on its own GPU and takes every world-size-th batch; the only
per-step wait between ranks is DDP's gradient all-reduce (and one tiny all-reduce of the
loss and its finiteness), and the host waits for the GPUs only when it logs, evaluates or
saves (``optimization.PendingSteps``). On a GPU the DataLoader workers only pad audio and
the log-mel is computed on the GPU (``features.batch_to``): Whisper base's step is shorter
than the CPU's log-mel of its batch (benchmarks/results/loop-vs-bench-h200/).

The run folder's layout is ``run.py``'s; the optimizer step is ``optimization.py``'s,
shared with ``whisper-tune bench train``, so the benchmark times what users run.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, fit
from .augment import WaveAugment, set_spec_augment, spec_augment_config
from .averaging import average_weights, last_checkpoints, write_averaged_record
from .batch_order import EpochBatches, epoch_batches  # noqa: F401 - epoch_batches: part of this module's API
from .config import TrainConfig, to_dict
from .encoder_window import use_encoder_window
from .errors import UserError
from .evaluation import decode_dataset
from .features import IndexedRows, SpeechCollator, batch_to
from .inference import TransformersEngine
from .logmel import LogMel
from .modeling import (
    check_processor,
    load_processor,
    lora_model,
    parameter_counts,
    pick_device,
    set_generation_language,
)
from .optimization import PendingSteps, build_optimizer, unwrap_ddp
from .prepare import load_prepared, prepared_folder
from .preserve import Preserver
from .processor import MAX_LABEL_TOKENS, resolve_language
from .quantization import NF4
from .replay import check_replay, prepare_replay, replay_record
from .reporting import MetricsLog, Throughput, environment, peak_memory_gib, plot_run
from .run import BASE_IS_BEST, RunDir, RunRecord, write_adapter_meta
from .writable import check_writable

log = logging.getLogger(__name__)


class TrainingStopped(UserError):
    """The run stopped on purpose (non-finite loss, out of memory); the message says what to do."""


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    steps: int
    final_loss: float | None
    best: dict | None  # {"step", "wer", "cer"} of the best evaluation
    samples_per_s: float  # overall: the whole loop, warm-up, loader starts and evaluations included
    wall_s: float
    stopped_early: bool = False  # stopped by stop_after, resumable
    early_stopped_at: int | None = None  # stopped by eval.patience: finished, adapter/ is the best
    steady_samples_per_s: float | None = None  # training steps only (reporting.Throughput)


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


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _ddp(model, device: torch.device):
    """The model in DistributedDataParallel, its gradients views of DDP's all-reduce buckets
    (no copy into the buckets and back; the step zeroes them rather than freeing them).
    Buckets keep DDP's 25 MiB: large-v2's r=32 q/v adapter (63 MB of fp32 gradients) fills
    three, so the first is all-reduced while the backward pass still runs."""
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids, gradient_as_bucket_view=True)


def _per_rank(values: dict, world: int) -> dict:
    """``values`` of this rank, plus ``<key>_per_rank`` lists of every rank's (rank 0 writes
    run.json; peak memory differs per GPU)."""
    if world == 1:
        return values
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, values)
    return values | {f"{k}_per_rank": [g[k] for g in gathered] for k in values}


# ---- the loop ------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _oom_message(cfg: TrainConfig) -> str:
    return (
        f"out of GPU memory at batch_size {cfg.train.batch_size}: set train.batch_size=auto (measures what "
        f"fits), or lower train.batch_size (and raise train.grad_accum to keep the effective batch), set "
        f"model.gradient_checkpointing=true, or use model.quantization={NF4}"
    )


@contextlib.contextmanager
def _disk_full_says(folder: Path):
    """A full disk while writing ``folder``: one line saying what to do, not a traceback (the
    write is atomic, so nothing half-written is left)."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise TrainingStopped(
            f"disk full while writing {folder}: free space on {folder.parent} and run again with --resume "
            f"(the last complete checkpoint is kept)"
        ) from None


# ---- the run -------------------------------------------------------------------------


def check_train_settings(cfg: TrainConfig, device: torch.device) -> None:
    """What the config alone cannot know: the device, the base's width, the noise folder."""
    from .adapter_check import base_config

    if cfg.train.compile and device.type != "cuda":
        raise UserError(
            f"train.compile=true compiles for CUDA GPUs; this run is on {device.type}: set train.compile=false"
        )
    width = (base_config(cfg.model.base) or {}).get("d_model")
    if isinstance(width, int) and cfg.lora.r > width:
        raise UserError(
            f"lora.r = {cfg.lora.r} is above the base's layer width ({width}): a rank can be at most the width "
            f"(and is usually 8..64); lower lora.r"
        )
    if cfg.train.max_steps is not None and cfg.train.warmup_steps > cfg.train.max_steps:  # a short trial run
        log.warning(
            "train.warmup_steps (%d) is above train.max_steps (%d): the learning rate never reaches %g",
            cfg.train.warmup_steps,
            cfg.train.max_steps,
            cfg.train.learning_rate,
        )
    noise = cfg.augment.noise_dir
    if noise and not Path(noise).expanduser().is_dir():
        raise UserError(f"augment.noise_dir {noise} is not a folder: give a folder of noise recordings, or null")


def _die_with_parent(worker_id: int) -> None:
    """A DataLoader worker ends when the training process does, even after a SIGKILL (Linux)."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def prepare_run_data(cfg: TrainConfig, run: RunDir, progress: bool = True) -> dict[str, Path]:
    """The prepared folders of the train (and eval) split: prepared into the run folder with
    the processor the run saved (reused when done already), or the source itself when it is
    a prepared folder. Training then only opens prepared folders."""
    splits = {"train": cfg.data.train_split} | ({"eval": cfg.data.eval_split} if cfg.eval.every >= 0 else {})
    folders = {
        which: prepared_folder(cfg.data, split, run.prepared(which), str(run.processor), progress=progress)
        for which, split in splits.items()
    }
    replayed = prepare_replay(cfg.data, run.prepared("replay"), str(run.processor), progress=progress)
    return folders | ({"replay": replayed} if replayed else {})


@dataclass
class Position:
    """Where the run is: what a checkpoint saves besides weights and optimizer."""

    step: int = 0
    epoch: int = 0
    micro_done: int = 0  # micro-batches of this rank's current epoch already trained
    best: dict | None = None  # {"step", "wer", "cer"} of the best evaluation
    since_best: int = 0  # evaluations since the best one (eval.patience)


class TrainingRun:
    """A training run as named steps (torchtune's recipe shape): :meth:`setup` builds the
    model, data and optimizer and resumes; :meth:`fit` loops over epochs, each step being
    :class:`OptimizerStep` then :meth:`_after_step` (log, maybe evaluate, maybe save);
    :meth:`finish` writes the adapter and the run record."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, stop_after: int | None = None, progress: bool = True):
        self.cfg, self.resume_asked, self.stop_after, self.progress = cfg, resume, stop_after, progress
        self.world, self.rank, local_rank = _dist_setup()
        self.main_rank = self.rank == 0
        self.device = pick_device(local_rank)
        self.run = RunDir(cfg.train.output_dir)
        self.pos = Position()
        self.resumed_from: Path | None = None
        self.early_stop_at: int | None = None
        self.averaged: list[Path] = []  # checkpoints averaged into the model at the end (train.average_last)
        self.loader = None

    # -- setup --------------------------------------------------------------------------

    def setup(self) -> None:
        self._check_folder()
        if self.main_rank:
            self._check_settings()  # before anything loads or is written
            self._clean_folder()
            self.run.write_config(self.cfg)
        _seed_everything(self.cfg.train.seed)
        self._build_model()  # the model first: a wrong base or a missing bitsandbytes fails before data work
        if self.main_rank:
            self.processor.save_pretrained(self.run.processor)
            self.folders = prepare_run_data(self.cfg, self.run, self.progress)
        _barrier(self.world)
        if not self.main_rank:  # rank 0 prepared them: this finds them finished
            self.folders = prepare_run_data(self.cfg, self.run, progress=False)
        self._build_data()
        self.optimizer, self.scheduler, self.step_fn = build_optimizer(
            self.model, self.cfg, self.total_steps, self.device, self.world
        )
        self._resume()
        resumed_step = self.pos.step if self.resumed_from else None
        self.metrics = MetricsLog(self.run.path, resumed_step) if self.main_rank else None
        if self.world > 1:
            self.model = self.step_fn.model = _ddp(self.model, self.device)

    def _check_folder(self) -> None:
        if not self.resume_asked and checkpoint.finished(self.run.checkpoints):
            raise UserError(
                f"{self.run.path} already holds checkpoints: pass --resume to continue, or choose another "
                f"train.output_dir"
            )

    def _check_settings(self) -> None:
        """What can be refused without loading anything: the language, a local base that is
        not there, a data source that does not open (nothing is decoded yet)."""
        from .modeling import resolve_model
        from .sources import open_source

        resolve_language(self.cfg.data.language)
        resolve_model(self.cfg.model.base)
        check_writable(self.run.path, "train.output_dir")
        check_train_settings(self.cfg, self.device)
        source = open_source(self.cfg.data, progress=self.progress)
        source.check_split(self.cfg.data.train_split)
        if self.cfg.eval.every >= 0:
            source.check_split(self.cfg.data.eval_split)
        check_replay(self.cfg.data, progress=self.progress)
        if self.resume_asked:
            self._check_latest_checkpoint()

    def _check_latest_checkpoint(self) -> None:
        """The newest readable checkpoint against these settings, before the model loads
        (resume checks it again as it loads, past damaged ones)."""
        for path in reversed(checkpoint.finished(self.run.checkpoints)):
            try:
                state = checkpoint.read_state(path)
            except checkpoint.CheckpointUnreadable:
                continue
            self._check_resumable(path, state)
            return

    def _clean_folder(self) -> None:
        """Temporary folders that a killed write left (``.best.tmpPID``, ``.step-N.tmpPID``)."""
        for folder in (self.run.path, self.run.checkpoints):
            for stale in checkpoint.clean_stale(folder):
                log.info("removed %s, left by an interrupted write", stale)

    def _build_model(self) -> None:
        cfg = self.cfg
        fit.apply_memory_cap(self.device, cfg.train.gpu_memory)  # before anything is on the GPU
        self.processor = load_processor(cfg.model.base)
        self.model = lora_model(cfg.model, cfg.lora, self.device, compile=cfg.train.compile)
        set_spec_augment(self.model, cfg.augment)
        # "full" where the patch cannot go (this transformers lacks the internals): one warning
        self.encoder_window = use_encoder_window(self.model, cfg.model.encoder_window)
        check_processor(self.model.config, self.processor, cfg.model.base)
        self.language = resolve_language(cfg.data.language)
        set_generation_language(self.model, self.processor.tokenizer, self.language, cfg.data.task)
        self.trainable, self.total = parameter_counts(self.model)
        log.info(
            "trainable params: %s || all params: %s || trainable%%: %.4f",
            f"{self.trainable:,}",
            f"{self.total:,}",
            100 * self.trainable / self.total,
        )

    def _build_data(self) -> None:
        """Open the prepared splits; count this rank's batches and the run's steps."""
        cfg = self.cfg
        train_ds = load_prepared(self.folders["train"])
        self.eval_ds = load_prepared(self.folders["eval"]) if self.main_rank and "eval" in self.folders else None
        if len(train_ds) == 0:
            raise UserError(
                f"no usable training clips in {cfg.data.source} ({cfg.data.train_split}): "
                f"see {self.run.prepared('train') / 'rejected.jsonl'}"
            )
        self.durations = np.asarray(train_ds["duration"], dtype=np.float32)
        cfg = self._fit(train_ds)
        if cfg.train.batch_size > len(train_ds):
            log.warning(
                "train.batch_size %d is larger than the %d training clips: each step sees all of them at once",
                cfg.train.batch_size,
                len(train_ds),
            )
        batches = epoch_batches(self.durations, cfg.train.batch_size, 0, 0, False, self.world, self.rank)
        self.micro_per_epoch = len(batches)
        if self.world > 1:
            log.info(
                "rank %d of %d on %s: %d batches of %d per epoch",
                self.rank,
                self.world,
                self.device,
                self.micro_per_epoch,
                cfg.train.batch_size,
            )
        if self.micro_per_epoch == 0:
            raise UserError(
                f"{len(train_ds)} clips make no batch of {cfg.train.batch_size} on {self.world} devices: "
                f"lower train.batch_size"
            )
        steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.train.grad_accum)
        self.total_steps = cfg.train.max_steps or math.ceil(cfg.train.epochs * steps_per_epoch)
        self.collate = SpeechCollator(
            self.processor.feature_extractor,
            self.model.config.decoder_start_token_id,
            augment=WaveAugment.from_settings(cfg.augment, cfg.train.seed),
            attention_mask=spec_augment_config(cfg.augment)["apply_spec_augment"],
            audio_only=self.device.type != "cpu",  # log-mel on the GPU, next to the model (batch_to)
            preserve=self._preserver(train_ds),
            window=self.encoder_window,
        )
        self.log_mel = LogMel.of(self.processor.feature_extractor)
        self.data = IndexedRows(train_ds.select_columns(["audio", "labels"]).with_format("numpy"))

    def _fit(self, train_ds) -> TrainConfig:
        """``batch_size``/``gradient_checkpointing: auto``: probe (or read the cached plan),
        then train with the plan's numbers (``self.cfg`` holds them from here on; config.yaml
        keeps what was asked, run.json what was chosen). The probe's labels are the training
        data's longest, so the plan holds for every batch."""
        self.fit_plan = None
        if not fit.wants_plan(self.cfg):
            return self.cfg
        longest = max((len(labels) for labels in train_ds["labels"]), default=1)
        if self.cfg.preserve.prompt_share:  # another clip's text before the transcript
            longest *= 2
        longest = min(longest, MAX_LABEL_TOKENS)
        plan = fit.plan_for(self.cfg, self.model, self.device, label_tokens=longest)
        self.fit_plan = fit.agreed(plan, self.world)
        fit.use_plan(self.model, self.fit_plan)
        if self.main_rank:
            log.info("%s", self.fit_plan.line())
        self.cfg = fit.resolved(self.cfg, self.fit_plan)
        return self.cfg

    def _preserver(self, train_ds) -> Preserver | None:
        """The preserving switches (``preserve.*``, ``data.replay``) for the collator, or None."""
        cfg = self.cfg
        replay = load_prepared(self.folders["replay"]) if "replay" in self.folders else None
        self.replayed = replay_record(cfg.data, len(replay)) if replay is not None else None
        return Preserver.from_settings(
            cfg.preserve,
            cfg.train.seed,
            self.processor.tokenizer,
            texts=train_ds["text"] if cfg.preserve.prompt_share else (),
            replay=replay.select_columns(["audio", "labels"]).with_format("numpy") if replay is not None else None,
            replay_share=cfg.data.replay.share,
            rows=train_ds.select_columns(["audio", "labels"]).with_format("numpy"),
        )

    def _identity(self) -> dict:
        """What a checkpoint must agree on to be resumed (``REFUSED_CHANGES``), and the batch
        layout that a resume may change (the position is then re-derived in samples)."""
        cfg = self.cfg
        lora = {"r": cfg.lora.r, "alpha": cfg.lora.alpha, "targets": cfg.lora.target_modules()}
        return {
            "model": {"base": cfg.model.base, "quantization": cfg.model.quantization},
            "lora": lora | {"freeze_encoder": cfg.lora.freeze_encoder},
            "train": {"batch_size": cfg.train.batch_size, "grad_accum": cfg.train.grad_accum, "world_size": self.world},
        }

    def _resume(self) -> None:
        found = None
        if self.resume_asked:
            found = checkpoint.resume_state(self.run.checkpoints, self.model, check=self._check_resumable)
        if found is None:
            if self.resume_asked:
                log.warning("no checkpoint in %s: starting from scratch", self.run.checkpoints)
            return
        self.resumed_from, state = found
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_fn.scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        self.pos = Position(
            state["step"], state["epoch"], state["micro_done"], state["best"], state.get("since_best", 0)
        )
        self._rebatch(state.get("run", {}).get("train"))
        log.info("resuming from %s (step %d)", self.resumed_from, self.pos.step)

    def _check_resumable(self, path: Path, state: dict) -> None:
        """Refuse, before the adapter loads, a checkpoint of another model, holding or adapter."""
        saved = state.get("run")
        if saved is None:
            return
        now = self._identity()
        changed = checkpoint.resume_differences(
            {k: saved.get(k, {}) for k in ("model", "lora")}, {k: now[k] for k in ("model", "lora")}
        )
        if changed:
            raise UserError(
                f"{path} was trained with other settings ({'; '.join(changed)}): resume with the run's own "
                f"settings ({self.run.config_file}), or start a new run in another train.output_dir"
            )

    def _rebatch(self, saved: dict | None) -> None:
        """A resume with another batch size, accumulation or number of processes: keep the
        position in the epoch as a number of samples (a saved position past the end of the
        new epoch starts the next one)."""
        now = self._identity()["train"]
        if saved and saved != now:
            log.warning("resuming with %s", "; ".join(checkpoint.resume_differences({"train": saved}, {"train": now})))
            samples = self.pos.micro_done * saved["batch_size"] * saved["world_size"]
            self.pos.micro_done = samples // (now["batch_size"] * now["world_size"])
        if self.pos.micro_done >= self.micro_per_epoch:
            self.pos.epoch, self.pos.micro_done = self.pos.epoch + 1, 0

    # -- the loop -----------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train until ``max_steps``/``epochs`` (or ``stop_after``), then :meth:`finish`."""
        from tqdm.auto import tqdm

        self.rate, self.pending, self.window, self.last_loss = Throughput(self.device), PendingSteps(), [], None
        self.target = min(self.total_steps, self.stop_after) if self.stop_after else self.total_steps
        self.bar = tqdm(
            total=self.total_steps,
            initial=self.pos.step,
            unit="step",
            desc="train",
            disable=not (self.progress and self.main_rank),
        )
        self.model.train()
        try:
            self._evaluate_base()
            while self.pos.step < self.target and self.early_stop_at is None:
                self._run_epoch()
            if self.pos.step >= self.total_steps and self.early_stop_at is None and self.main_rank:
                self._average_last()
        except torch.OutOfMemoryError:
            raise TrainingStopped(_oom_message(self.cfg)) from None
        finally:
            self.bar.close()
            if self.metrics is not None:
                self.metrics.close()
        return self.finish()

    def _loader(self):
        """The DataLoader, built once: its batch sampler (:class:`EpochBatches`) is told the
        epoch and the position, so worker processes persist across epochs."""
        cfg = self.cfg.train
        if self.loader is None:
            self.order = EpochBatches(
                self.durations, cfg.batch_size, cfg.seed, cfg.group_by_length, self.world, self.rank
            )
            workers = min(cfg.num_workers, os.cpu_count() or 1)
            if workers < cfg.num_workers:
                log.warning("train.num_workers=%d capped to the %d CPU cores", cfg.num_workers, workers)
            self.loader = torch.utils.data.DataLoader(
                self.data,
                batch_sampler=self.order,
                collate_fn=self.collate,
                num_workers=workers,
                generator=torch.Generator().manual_seed(cfg.seed),
                pin_memory=self.device.type == "cuda",
                persistent_workers=workers > 0,
                worker_init_fn=_die_with_parent if workers else None,
            )
        self.order.set_position(self.pos.epoch, self.pos.micro_done)
        return self.loader

    def _run_epoch(self) -> None:
        """The rest of the current epoch. Nothing here waits for the device: the step's loss
        and skip flag wait in ``self.pending`` until :meth:`_after_step` reads them."""
        self.rate.leave_out_next_step()  # the loader's start
        batches = (batch_to(batch, self.log_mel, self.device, self.encoder_window) for batch in self._loader())
        while self.pos.step < self.target and self.pos.micro_done < self.micro_per_epoch and self.early_stop_at is None:
            n_micro = min(self.cfg.train.grad_accum, self.micro_per_epoch - self.pos.micro_done)
            outcome = self.step_fn(batches, n_micro)
            self.pos.micro_done += n_micro
            self.scheduler.step()
            self.pos.step += 1
            self.pending.add(self.pos.step, outcome)
            self.rate.step_done(outcome.samples * self.world)
            end_of_epoch = self.pos.micro_done >= self.micro_per_epoch
            self._after_step(end_of_epoch)
            if end_of_epoch:
                break

    def _read_pending(self) -> None:
        """The losses and skip flags of the steps since the last read, in one transfer. Every
        rank reads at the same steps and sees the same (all-reduced) flags, so on_nan=stop
        stops every rank alike, at the first bad step, before anything later is saved."""
        for step, loss, skipped in self.pending.read():
            if skipped:
                self._on_non_finite(step, loss)
                continue
            self.last_loss = loss
            if self.main_rank:
                self.window.append(loss)

    def _on_non_finite(self, step: int, loss: float) -> None:
        """A skipped step (the optimizer applied nothing): stop, or warn and go on."""
        if self.cfg.train.on_nan == "stop":
            last = checkpoint.latest(self.run.checkpoints)
            raise TrainingStopped(
                f"loss became {loss} at step {step}: stopped; last good checkpoint: "
                f"{last or 'none yet'}. Lower train.learning_rate or use mixed_precision=bf16/no, "
                f"then --resume; or set train.on_nan=skip to drop such batches"
            )
        if self.main_rank:
            log.warning("non-finite loss or gradient at step %d: batch skipped", step)

    def _after_step(self, end_of_epoch: bool) -> None:
        """At log, eval and save points (the same steps on every rank) the pending losses are
        read (where on_nan=stop stops); then the metrics line, maybe an evaluation, maybe a
        checkpoint. No barrier: the next step's all-reduce is the only wait between ranks."""
        step, train = self.pos.step, self.cfg.train
        log_due = step % train.log_every == 0 or end_of_epoch or step == self.target
        eval_due = self._wants_eval(end_of_epoch)
        save_due = step % train.save_every == 0 or step == self.target
        if log_due or eval_due or save_due:
            self._read_pending()
        self._show_progress()
        record = self._log_record() if log_due and self.main_rank else {}
        if self.main_rank and eval_due:
            with self.rate.left_out():
                record |= self._evaluate()
        if self.main_rank and record:
            self.metrics.log({"step": step} | record)
        if eval_due and self._patience_spent():
            self.early_stop_at = step
        if end_of_epoch:
            self.pos.epoch, self.pos.micro_done = self.pos.epoch + 1, 0
        if self.main_rank and save_due:
            with self.rate.left_out():
                self._save_checkpoint()

    def _show_progress(self) -> None:
        self.bar.update(1)
        self.bar.set_postfix(
            # losses are read at log points only (no per-step sync): none yet reads "-", not "nan"
            loss=f"{self.last_loss:.3f}" if self.last_loss is not None else "-",
            lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
            samples_s=f"{self.rate.steady() or self.rate.overall():.2f}",
        )

    def _log_record(self) -> dict:
        """The training part of a metrics line, every ``log_every`` steps (and at epoch ends):
        the mean loss of the steps since the last line (skipped ones left out) and the
        steady samples/s so far."""
        record = {"train_loss": sum(self.window) / len(self.window)} if self.window else {}
        self.window = []
        return record | {
            "lr": self.scheduler.get_last_lr()[0],
            "samples_per_s": self.rate.steady() or self.rate.overall(),
            "epoch": self.pos.epoch + self.pos.micro_done / self.micro_per_epoch,
        }

    def _wants_eval(self, end_of_epoch: bool) -> bool:
        """Whether this step evaluates (the same answer on every rank; rank 0 does the work)."""
        every, step = self.cfg.eval.every, self.pos.step
        if "eval" not in self.folders:
            return False
        return (every > 0 and step % every == 0) or (every == 0 and end_of_epoch) or step == self.total_steps

    def _evaluate(self) -> dict:
        """WER/CER on the eval split; a new best adapter is saved to ``best/``."""
        cfg = self.cfg
        engine = TransformersEngine(
            unwrap_ddp(self.model),
            self.processor,
            self.language,
            cfg.data.task,
            amp=self.step_fn.amp,
            encoder_window=self.encoder_window,
        )
        result = decode_dataset(
            engine, self.eval_ds, cfg.eval.batch_size, cfg.eval.max_new_tokens, cfg.eval.max_samples
        )
        scores = {f"eval_{k}": v for k, v in result.scores().items()} | {"eval_clips_per_s": result.clips_per_s}
        score = scores[f"eval_{cfg.eval.metric}"]
        if self.pos.best is None or score < self.pos.best[cfg.eval.metric]:
            self.pos.best = {"step": self.pos.step, "wer": scores["eval_wer"], "cer": scores["eval_cer"]}
            if self.averaged:
                self.pos.best["averaged"] = len(self.averaged)
            self.pos.since_best = 0
            self._save_adapter(self.run.best, self.pos.best)
        else:
            self.pos.since_best += 1
        return scores

    def _evaluate_base(self) -> None:
        """Step 0 of a new run: the untrained adapter (the base) is evaluated as the first
        candidate for best/ (``eval.base_candidate``), so that best/ is never worse than the
        base on the eval split. Rank 0 evaluates; the others meet it at the first step."""
        if self.pos.step or not self.cfg.eval.base_candidate or self.cfg.eval.every < 0 or "eval" not in self.folders:
            return
        if self.main_rank:
            with self.rate.left_out():
                self.metrics.log({"step": 0} | self._evaluate())

    def _average_last(self) -> None:
        """``train.average_last``: the model takes the mean of the last N checkpoints (the
        last of them is this final step), so adapter/ is the average; it is evaluated as one
        more candidate for best/."""
        n = self.cfg.train.average_last
        if n < 2:
            return
        paths = last_checkpoints(self.run.checkpoints, n)
        if len(paths) < n:
            log.warning(
                "train.average_last=%d, but the run wrote %d checkpoints (one every train.save_every=%d steps)%s",
                n,
                len(paths),
                self.cfg.train.save_every,
                ": adapter/ is the last step's" if len(paths) < 2 else f": averaging {len(paths)}",
            )
        if len(paths) < 2:
            return
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(unwrap_ddp(self.model), average_weights(paths))
        self.averaged = paths
        log.info("adapter/ is the mean of the checkpoints %s", ", ".join(p.name for p in paths))
        if "eval" in self.folders and self.cfg.eval.every >= 0:
            with self.rate.left_out():
                self.metrics.log({"step": self.pos.step, "averaged": len(paths)} | self._evaluate())

    def _patience_spent(self) -> bool:
        """``eval.patience`` evaluations in a row without a better score (rank 0 decides)."""
        patience = self.cfg.eval.patience
        spent = patience is not None and self.pos.since_best >= patience
        if self.world > 1:
            flag = torch.tensor([int(spent)], device=self.device)
            torch.distributed.broadcast(flag, 0)
            spent = bool(flag.item())
        if spent and self.main_rank:
            log.warning(
                "no better eval %s in %d evaluations: stopped at step %d; adapter/ is the best one (step %d)",
                self.cfg.eval.metric,
                patience,
                self.pos.step,
                self.pos.best["step"],
            )
        return spent

    def _save_adapter(self, folder: Path, scores: dict | None = None) -> None:
        """An adapter folder that later commands need alone: PEFT files, processor, record."""

        def fill(tmp: Path) -> None:
            unwrap_ddp(self.model).save_pretrained(tmp)
            self.processor.save_pretrained(tmp)
            write_adapter_meta(tmp, self.cfg.model, self.language, self.cfg.data.task)
            if scores is not None:
                self.run.write_best(tmp, scores)
            if self.averaged:  # the same record as `whisper-tune average` writes
                write_averaged_record(tmp, self.averaged)

        with _disk_full_says(folder):
            checkpoint.write_atomically(folder, fill)

    def _save_checkpoint(self) -> Path:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.step_fn.scaler.state_dict(),
            "epoch": self.pos.epoch,
            "micro_done": self.pos.micro_done,
            "best": self.pos.best,
            "since_best": self.pos.since_best,
            "run": self._identity(),
        }
        with _disk_full_says(self.run.checkpoints):
            path = checkpoint.save(self.run.checkpoints, self.pos.step, unwrap_ddp(self.model), state)
        checkpoint.prune(self.run.checkpoints, self.cfg.train.keep_last)
        return path

    # -- the end ------------------------------------------------------------------------

    def finish(self) -> TrainResult:
        """The final adapter (when the run completed), the plot, ``run.json`` and the card."""
        step = self.pos.step
        result = TrainResult(
            self.run.path,
            self.run.adapter,
            step,
            self.last_loss,
            self.pos.best,
            self.rate.overall(),
            self.rate.wall_s(),
            stopped_early=step < self.total_steps and self.early_stop_at is None,
            early_stopped_at=self.early_stop_at,
            steady_samples_per_s=self.rate.steady(),
        )
        self.peaks = _per_rank(peak_memory_gib(self.device), self.world)  # a collective: every rank
        if not self.main_rank:
            return result
        if self.early_stop_at is not None:
            with _disk_full_says(self.run.adapter):
                checkpoint.write_atomically(
                    self.run.adapter, lambda tmp: shutil.copytree(self.run.best, tmp, dirs_exist_ok=True)
                )
        elif not result.stopped_early:
            self._save_adapter(self.run.adapter)
        if result.best is not None and result.best.get("step") == 0:
            log.warning(BASE_IS_BEST)
        plot_run(self.run.path)
        self.run.write_record(self._record(result))
        if not result.stopped_early:
            from .export import write_adapter_card

            write_adapter_card(self.run.adapter, self.cfg.model.base, self.language, self.cfg.data.task)
        return result

    def _record(self, result: TrainResult) -> RunRecord:
        cfg = self.cfg
        return RunRecord(
            config=to_dict(cfg),
            world_size=self.world,
            base_model=cfg.model.base,
            quantization=cfg.model.quantization,
            parameters={
                "trainable": self.trainable,
                "total": self.total,
                "trainable_percent": 100 * self.trainable / self.total,
            },
            steps=result.steps,
            finished=not result.stopped_early,
            resumed_from=str(self.resumed_from) if self.resumed_from else None,
            final_train_loss=result.final_loss,
            best=result.best,
            best_is_base=None if result.best is None else result.best.get("step") == 0,
            early_stopped_at=result.early_stopped_at,
            samples_per_s=result.samples_per_s,
            steady_samples_per_s=result.steady_samples_per_s,
            wall_s=result.wall_s,
            environment=environment(self.device),
            extra=self.peaks
            | ({"replay": self.replayed} if self.replayed else {})
            | ({"fit": self.fit_plan.to_dict()} if self.fit_plan else {}),
        )


def train(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None, progress: bool = True) -> TrainResult:
    """Run (or resume) the training described by ``cfg``; returns where the adapter is.

    ``stop_after`` ends the run after that many optimizer steps in total, leaving a
    checkpoint to ``resume`` from, with the schedule of the full run unchanged.
    """
    run = TrainingRun(cfg, resume, stop_after, progress)
    run.setup()
    result = run.fit()
    if run.main_rank and not result.stopped_early and wants_card(cfg, run.device) and "eval" in run.folders:
        folders, language, best_is_base = run.folders, run.language, run.run.best_is_base()
        del run  # the training model and its optimizer go before the card's two engines load
        write_run_card(cfg, folders["eval"], language, best_is_base)
    return result


def wants_card(cfg: TrainConfig, device: torch.device) -> bool:
    """``eval.card``: null is on with a GPU, off on a CPU."""
    return cfg.eval.card if cfg.eval.card is not None else device.type == "cuda"


def write_run_card(cfg: TrainConfig, eval_folder: Path, language: str, best_is_base: bool) -> Path:
    """The report card of the run's adapter (best/, else adapter/) on its eval split, into the
    run folder and beside the adapters (so export and push_to_hub find it)."""
    from .grading import copy_card, grade_split

    run = RunDir(cfg.train.output_dir)
    remark = BASE_IS_BEST if best_is_base else ""
    adapter, prepared = str(run.serving_adapter()), load_prepared(eval_folder)
    grade_split(cfg.model.base, adapter, language, prepared, run.path, cfg.eval.max_samples, remark=remark)
    for folder in (run.best, run.adapter):
        copy_card(run.path, folder)
    return run.path
