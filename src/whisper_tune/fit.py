"""The batch that fits the GPU: ``train.batch_size: auto`` and ``model.gradient_checkpointing:
auto``, chosen by measuring rather than by a formula.

Activation memory depends on the holding, compile, the LoRA targets, the label length and
the allocator, so a formula is wrong somewhere; a few real optimizer steps on the model about
to train are not. :func:`search` walks the candidates (micro-batch, share of layers
recomputed) whose micro-batch divides the effective batch, so that micro-batch x
accumulation keeps it exact. From no recomputation to all of it, it finds for each share the
largest micro-batch whose peak stays under the budget less :data:`MARGIN`; a share is only
tried for batches larger than less recomputation reached (recomputing costs about a third
of a layer's time, so it must buy a larger batch). Of those, the one with the most measured
samples per second wins (within 3 %, the lower peak). A memory model of the probes so far
(base memory plus bytes per clip, interpolated between shares) makes each first guess, so a
share usually costs two probes.

A probe (:class:`StepMeter`) is ``PROBE_STEPS`` real optimizer steps at the run's settings
(holding, compile, LoRA, autocast, the longest label of the training data) on random
inputs; an out-of-memory error is caught, everything the step held is freed, and the next
candidate runs. The probe leaves nothing the run could see: the adapter's weights and every
random generator are restored and its optimizer is dropped. The plan is cached per (GPU,
architecture, settings, budget) under ``$WHISPER_TUNE_CACHE/fit``, so the next run with the
same settings, or a resume, starts at once with the same plan.

A cap (``train.gpu_memory``, ``bench fit --memory``) is set with
``torch.cuda.set_per_process_memory_fraction`` before the model loads, so the probe and the
run are held to it alike.

On a CPU there is no probe: RAM rarely limits a LoRA run there, and a CPU step's speed
barely grows with the batch, so auto takes the largest micro-batch up to 8 that divides the
effective batch and the least recomputation allowed, and says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import itertools
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from .checkpoint import write_json_atomically
from .config import AUTO, TrainConfig, parse_memory
from .errors import UserError
from .logmel import N_FRAMES
from .optimization import build_optimizer
from .processor import cache_root
from .reporting import environment
from .speedups import checkpoint_share

log = logging.getLogger(__name__)

SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)  # shares of layers recomputed that auto tries, least first
MARGIN = 0.10  # of the budget, left free: evaluation's decoding, longer batches, fragmentation
NEAR = 0.97  # candidates within 3 % of the fastest count as fast as it: the lower peak wins
PROBE_STEPS = 3  # optimizer steps per candidate: the first warms up (compile, cuBLAS plans), the rest are timed
DEFAULT_EFFECTIVE_BATCH = 8  # train.effective_batch null: the reference recipe's batch
CPU_BATCH = 8  # the largest micro-batch auto takes on a CPU
GIB = 2**30
PROBE_LABELS = 50000  # label ids below every Whisper vocabulary's size (51865, 51866)


# ---- the search (pure: a measure function in, a choice out) --------------------------


@dataclass(frozen=True)
class Candidate:
    batch: int  # clips per micro-batch
    share: float  # share of the encoder's and decoder's layers recomputed


@dataclass
class Probe:
    """What one candidate took: its peak memory (None: out of memory) and seconds per
    optimizer step of one micro-batch once warm."""

    candidate: Candidate
    peak_bytes: int | None
    step_s: float | None = None

    def fits(self, limit: int) -> bool:
        return self.peak_bytes is not None and self.peak_bytes <= limit

    @property
    def samples_per_s(self) -> float:
        return self.candidate.batch / self.step_s if self.step_s else 0.0

    def to_dict(self) -> dict:
        peak = None if self.peak_bytes is None else round(self.peak_bytes / GIB, 3)
        return {"batch": self.candidate.batch, "share": self.candidate.share, "peak_gib": peak, "step_s": self.step_s}


@dataclass(frozen=True)
class FitSpace:
    """The candidates of a config: micro-batches dividing the effective batch (or the fixed
    batch size) and shares of recomputation (or the fixed share)."""

    effective_batch: int
    batches: tuple[int, ...]  # ascending
    shares: tuple[float, ...]  # least recomputation first

    @classmethod
    def of(cls, cfg: TrainConfig) -> FitSpace:
        train, share = cfg.train, cfg.model.gradient_checkpointing
        if train.batch_size == AUTO:
            effective = train.effective_batch or DEFAULT_EFFECTIVE_BATCH
            batches = tuple(b for b in range(1, effective + 1) if effective % b == 0)
        else:
            effective, batches = train.batch_size * train.grad_accum, (train.batch_size,)
        return cls(effective, batches, SHARES if share == AUTO else (float(share),))


def search(
    space: FitSpace, measure: Callable[[Candidate], Probe], limit: int, base_bytes: int = 0
) -> tuple[Probe | None, list[Probe]]:
    """(the chosen probe or None when nothing fits, every probe taken in order).

    ``measure`` runs a candidate; ``limit`` is the most peak memory a plan may take (the
    budget less the margin); ``base_bytes`` is what the model holds before any activation
    (weights, gradients, optimizer state), for the first guesses only."""
    probes: dict[Candidate, Probe] = {}

    def fits(index: int, share: float) -> bool:
        candidate = Candidate(space.batches[index], share)
        if candidate not in probes:
            probes[candidate] = measure(candidate)
        return probes[candidate].fits(limit)

    frontier, floor, top = [], -1, len(space.batches) - 1
    for share in space.shares:
        lo = floor + 1
        if lo > top:
            break
        guess = _guess(space, probes.values(), share, limit, base_bytes, lo)
        found = _largest(lo, top, guess, lambda i, share=share: fits(i, share))
        if found is None:
            continue  # nothing larger than less recomputation reached: more recomputation may
        frontier.append(probes[Candidate(space.batches[found], share)])
        floor = found
        if found == top:
            break  # the whole effective batch at once: more recomputation cannot help
    return _fastest(frontier), list(probes.values())


def _largest(lo: int, hi: int, guess: int, fits: Callable[[int], bool]) -> int | None:
    """The largest index in [lo, hi] that fits (fitting is monotone: a larger batch never
    takes less), probing ``guess`` first, then its neighbour, then by halves."""
    found, index, first = None, guess, True
    while lo <= hi:
        ok = fits(index)
        if ok:
            found, lo = index, index + 1
        else:
            hi = index - 1
        index = (lo if ok else hi) if first else (lo + hi) // 2
        first = False
    return found


def _guess(space: FitSpace, probes: Iterable[Probe], share: float, limit: int, base: int, lo: int) -> int:
    """The first batch index to probe at ``share``: where the memory model puts the largest
    batch under ``limit``; with nothing measured yet, a small batch (cheap, and it measures
    the bytes per clip)."""
    slopes: dict[float, float] = {}
    for p in probes:
        if p.peak_bytes is not None:
            s = p.candidate.share
            slopes[s] = max(slopes.get(s, 0.0), max(p.peak_bytes - base, 1) / p.candidate.batch)
    slope = _slope_at(slopes, share)
    top = len(space.batches) - 1
    if slope is None:
        return min(max(lo, 1), top)
    clips = (limit - base) / slope
    below = [i for i in range(lo, top + 1) if space.batches[i] <= clips]
    return below[-1] if below else lo


def _slope_at(slopes: dict[float, float], share: float) -> float | None:
    """Bytes per clip at ``share``: measured, interpolated between the nearest measured
    shares, or (more recomputation than any measured) scaled down as if recomputed layers
    kept nothing, a guess that aims high for the probe to correct."""
    if share in slopes:
        return slopes[share]
    below = max((s for s in slopes if s < share), default=None)
    above = min((s for s in slopes if s > share), default=None)
    if below is not None and above is not None:
        t = (share - below) / (above - below)
        return slopes[below] * (1 - t) + slopes[above] * t
    if below is not None:
        return max(slopes[below] * (1 - share) / (1 - below), 1.0)
    return slopes[above] if above is not None else None


def _fastest(frontier: list[Probe]) -> Probe | None:
    """The most samples per second; within :data:`NEAR` of it, the lowest peak."""
    if not frontier:
        return None
    best = max(p.samples_per_s for p in frontier)
    return min((p for p in frontier if p.samples_per_s >= NEAR * best), key=lambda p: p.peak_bytes)


# ---- the plan ------------------------------------------------------------------------


@dataclass
class Plan:
    """What auto chose, and why: written to run.json (``fit``) and the cache."""

    batch: int
    grad_accum: int
    share: float
    effective_batch: int
    device: str
    budget_gib: float | None  # None on a CPU without a probe
    peak_gib: float | None = None  # the chosen candidate's measured peak
    samples_per_s: float | None = None  # the chosen candidate's measured speed (probe steps)
    reason: str = ""
    cached: bool = False
    probes: list[dict] = field(default_factory=list)

    def line(self) -> str:
        """The plan in one line, as train and bench fit print it."""
        accum = f" x {self.grad_accum} accumulated" if self.grad_accum > 1 else ""
        text = (
            f"auto: batch {self.batch}{accum} (effective {self.effective_batch}), {self.share:.0%} of layers recomputed"
        )
        if self.peak_gib is not None:
            text += f"; peak {self.peak_gib:.1f} of {self.budget_gib:.1f} GiB, {self.samples_per_s:.1f} samples/s"
        return text + (f"; {self.reason}" if self.reason else "") + (" (cached)" if self.cached else "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def cpu_plan(space: FitSpace) -> Plan:
    """The CPU's plan, without a probe (see the module's docstring)."""
    small = [b for b in space.batches if b <= CPU_BATCH]
    batch = small[-1] if small else space.batches[0]
    reason = (
        f"on the CPU, no probe: a CPU step's speed barely grows with the batch and RAM rarely limits LoRA, so "
        f"the largest micro-batch up to {CPU_BATCH} and the least recomputation"
    )
    effective = space.effective_batch
    return Plan(batch, effective // batch, space.shares[0], effective, "cpu", None, reason=reason)


def _plan_of(best: Probe, space: FitSpace, budget: int, device: str, probes: list[Probe], reused: int = 0) -> Plan:
    batch = best.candidate.batch
    return Plan(
        batch,
        space.effective_batch // batch,
        best.candidate.share,
        space.effective_batch,
        device,
        round(budget / GIB, 2),
        round(best.peak_bytes / GIB, 2),
        round(best.samples_per_s, 2),
        reason=f"measured: {len(probes)} candidates, {sum(p.peak_bytes is None for p in probes)} out of memory"
        + (f", {reused} of them measured under a larger budget" if reused else ""),
        probes=[p.to_dict() for p in probes],
    )


def resolved(cfg: TrainConfig, plan: Plan) -> TrainConfig:
    """``cfg`` with the plan's batch, accumulation and share in place of auto."""
    train = dataclasses.replace(cfg.train, batch_size=plan.batch, grad_accum=plan.grad_accum, effective_batch=None)
    model = dataclasses.replace(cfg.model, gradient_checkpointing=plan.share)
    return dataclasses.replace(cfg, train=train, model=model)


def wants_plan(cfg: TrainConfig) -> bool:
    return cfg.train.batch_size == AUTO or cfg.model.gradient_checkpointing == AUTO


def use_plan(model, plan: Plan) -> None:
    """Recompute the plan's share of the model's layers."""
    checkpoint_share(model.get_base_model() if hasattr(model, "get_base_model") else model, plan.share)


def agreed(plan: Plan, world: int) -> Plan:
    """One plan for every rank (each probed its own GPU): the smallest batch, so that it fits
    on every one of them, and every rank steps in lockstep."""
    if world == 1:
        return plan
    plans = [None] * world
    torch.distributed.all_gather_object(plans, plan.to_dict())
    return Plan.from_dict(min(plans, key=lambda p: (p["batch"], -p["share"])))


# ---- the memory budget and cap -------------------------------------------------------


def apply_memory_cap(device: torch.device, cap: str | None) -> None:
    """Hold this process to ``cap`` of GPU memory (nothing on a CPU or without a cap):
    allocations past it raise torch's out-of-memory error, as on a card of that size."""
    if cap is None or device.type != "cuda":
        return
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, parse_memory(cap) / total), device)


def memory_budget(device: torch.device, cap: str | None) -> int:
    """Bytes a plan may take: the GPU's free memory plus what this process holds already (the
    model), or the cap when it is lower; on a CPU, the machine's free RAM or the cap. Rounded
    down to a quarter GiB, so that a cached plan is found again."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        available = free + torch.cuda.memory_reserved(device)
    else:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    budget = available
    if cap is not None:
        budget = min(parse_memory(cap), available)
        if budget < parse_memory(cap):
            log.warning("%s asked, but only %.1f GiB are free: planning within that", cap, available / GIB)
    return int(math.floor(budget / GIB * 4) / 4 * GIB)


# ---- measuring a candidate -------------------------------------------------------------


def random_batch(config, batch: int, label_tokens: int, device: torch.device, seed: int = 0) -> dict:
    """A training batch of random 30 s features and label ids, the same for a given seed
    (speed and memory do not depend on the values)."""
    generator = torch.Generator().manual_seed(seed)
    labels = min(PROBE_LABELS, config.vocab_size)
    features = torch.randn(batch, config.num_mel_bins, N_FRAMES, generator=generator)
    ids = torch.randint(0, labels, (batch, label_tokens), generator=generator)
    return {"input_features": features.to(device), "labels": ids.to(device)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step, batch: dict, n_micro: int, steps: int, device: torch.device) -> tuple[list[float], object]:
    """(seconds of each of ``steps`` optimizer steps of ``n_micro`` micro-batches of ``batch``,
    the last step's outcome)."""
    times, outcome = [], None
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        outcome = step(itertools.repeat(batch, n_micro), n_micro)
        sync(device)
        times.append(time.perf_counter() - start)
    return times, outcome


def release(device: torch.device) -> None:
    """Give freed memory back to the device, so the next candidate starts from the model alone."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_reserved(device)  # what a cap holds: reserved, fragmentation included
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the process's peak so far: conservative


@contextlib.contextmanager
def _untouched_rng(device: torch.device):
    """Every random generator as it was before the probe (dropout, SpecAugment, data order)."""
    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        yield
    random.setstate(states[0])
    np.random.set_state(states[1])


class StepMeter:
    """Measures candidates with real optimizer steps on the model that will train, and
    leaves the model as it found it (used as a context manager: the trainable weights are
    copied to the host on entry and restored after each candidate)."""

    def __init__(self, model, cfg: TrainConfig, device: torch.device, label_tokens: int, steps: int = PROBE_STEPS):
        self.model, self.cfg, self.device, self.label_tokens, self.steps = model, cfg, device, label_tokens, steps
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        held = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        # the model, plus the gradients and AdamW's two moments of what trains
        self.base_bytes = held + 3 * sum(p.numel() * p.element_size() for p in self.trainable)

    def __enter__(self) -> StepMeter:
        self.saved = [p.detach().to("cpu", copy=True) for p in self.trainable]
        return self

    def __exit__(self, *exc) -> None:
        self.saved = None

    def __call__(self, candidate: Candidate) -> Probe:
        use_plan(self.model, Plan(candidate.batch, 1, candidate.share, candidate.batch, "", None))
        release(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        times, step, batch, out_of_memory = [], None, None, False
        try:
            batch = random_batch(self.model.config, candidate.batch, self.label_tokens, self.device)
            _, _, step = build_optimizer(self.model, self.cfg, total_steps=1, device=self.device)
            self.model.train()
            times, _ = timed_steps(step, batch, 1, self.steps, self.device)
        except torch.OutOfMemoryError:
            out_of_memory = True
        peak = _peak(self.device)
        step = batch = None  # the optimizer's state and the inputs go before the next candidate
        self._restore()
        release(self.device)
        if out_of_memory:
            log.info("fit: batch %d, %.0f%% recomputed: out of memory", candidate.batch, 100 * candidate.share)
            return Probe(candidate, None)
        warm = times[1:] or times
        probe = Probe(candidate, peak, min(warm))
        log.info(
            "fit: batch %d, %.0f%% recomputed: peak %.2f GiB, %.1f samples/s",
            candidate.batch,
            100 * candidate.share,
            peak / GIB,
            probe.samples_per_s,
        )
        return probe

    @torch.no_grad()
    def _restore(self) -> None:
        for p, saved in zip(self.trainable, self.saved):
            p.grad = None
            p.copy_(saved)


# ---- the cache and the entry point ---------------------------------------------------


ARCHITECTURE_KEYS = (
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "encoder_attention_heads",
    "num_mel_bins",
    "vocab_size",
)


def fit_key(cfg: TrainConfig, model, device: torch.device, space: FitSpace, budget: int, label_tokens: int) -> dict:
    """Everything a plan depends on: the GPU, the architecture, the settings that change a
    step's memory or speed, the budget, and the library versions."""
    env = environment(device)
    lora = cfg.lora
    return {
        "device": env.get("gpu") or env.get("cpu"),
        "budget_gib": budget / GIB,
        "architecture": {k: getattr(model.config, k, None) for k in ARCHITECTURE_KEYS},
        "holding": [cfg.model.quantization, cfg.model.int8_threshold, cfg.model.attn_implementation],
        "train": [cfg.train.compile, cfg.train.mixed_precision, cfg.train.label_smoothing > 0],
        "lora": [lora.r, lora.target_modules(), lora.freeze_encoder, lora.decoder_r],
        "label_tokens": label_tokens,
        "space": [space.effective_batch, list(space.batches), list(space.shares)],
        "probe": [MARGIN, PROBE_STEPS],
        "versions": {k: env["versions"].get(k) for k in ("torch", "transformers", "peft", "bitsandbytes")},
    }


def _cache_file(key: dict):
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_root() / "fit" / f"{digest}.json"


def cached_plan(key: dict) -> Plan | None:
    path = _cache_file(key)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("key") == json.loads(json.dumps(key)):
            return dataclasses.replace(Plan.from_dict(data["plan"]), cached=True)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        log.warning("ignoring the unreadable cached plan %s (%s)", path, e)
    return None


def store_plan(key: dict, plan: Plan) -> None:
    path = _cache_file(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, {"key": key, "plan": plan.to_dict()})


def plan_for(
    cfg: TrainConfig,
    model,
    device: torch.device,
    label_tokens: int,
    probe_steps: int = PROBE_STEPS,
    use_cache: bool = True,
    probe_on_cpu: bool = False,
    measured: dict[Candidate, Probe] | None = None,
) -> Plan:
    """The plan for ``cfg`` on ``model`` (built, with LoRA, on ``device``): the CPU's plan, a
    cached one, or a new probe (``probe_on_cpu``: probe on the CPU too, with the process's
    peak RAM as the meter: for dry runs). ``measured`` keeps probes across calls on the same
    model and settings under several budgets (a candidate's peak does not depend on the cap
    it ran under, and one out of memory under a cap is so under a smaller one), so a
    benchmark planning one model for smaller and smaller caps measures each candidate once.
    Sets nothing: :func:`use_plan` does."""
    space = FitSpace.of(cfg)
    if device.type != "cuda" and not probe_on_cpu:
        return cpu_plan(space)
    budget = memory_budget(device, cfg.train.gpu_memory)
    key = fit_key(cfg, model, device, space, budget, label_tokens)
    plan = cached_plan(key) if use_cache else None
    if plan is not None:
        return plan
    limit = int(budget * (1 - MARGIN))
    memo = {} if measured is None else measured
    known = set(memo)
    with _untouched_rng(device), StepMeter(model, cfg, device, label_tokens, probe_steps) as meter:

        def measure(candidate: Candidate) -> Probe:
            if candidate not in memo:
                memo[candidate] = meter(candidate)
            return memo[candidate]

        best, probes = search(space, measure, limit, meter.base_bytes)
    reused = sum(p.candidate in known for p in probes)
    if best is None:
        raise UserError(
            f"training does not fit in {budget / GIB:.1f} GiB (less a {MARGIN:.0%} margin) even at batch "
            f"{space.batches[0]} with {space.shares[-1]:.0%} of layers recomputed: use model.quantization=int8-wo "
            f"or nf4, fewer lora.targets, or more memory (train.gpu_memory)"
        )
    plan = _plan_of(best, space, budget, str(device), probes, reused)
    store_plan(key, plan)
    return plan
