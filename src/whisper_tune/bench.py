"""Speed and memory on this machine: the reference recipe next to whisper-tune, side by side
in one call, so the ratios hold even on a noisy machine (on a GPU each training row runs in
a fresh process of its own: see :func:`time_training_isolated`).

``whisper-tune bench train`` times training steps; ``whisper-tune bench transcribe`` times
generation; ``whisper-tune bench fit`` prints the batch and checkpointing that ``auto``
chooses within a memory size (``fit.py``). Both use random weights of a named Whisper architecture (speed and memory do
not depend on the values) and write JSON plus a markdown table with the GPU, the library
versions and the exact command.

A training row is ``recipe`` (the reference recipe reproduced as its notebook does it:
LLM.int8 base, ``prepare_model_for_kbit_training``, LoRA r=32 on q/v, fp16 autocast with a
gradient scaler) or ``QUANTIZATION/BATCH/CHECKPOINTING[/compile]`` for whisper-tune's own path, built and
stepped by the code ``whisper-tune train`` runs (``modeling.lora_model``,
``training.build_optimizer`` and ``training.OptimizerStep``) with the reference recipe
file's LoRA and optimizer settings; e.g. ``none/8/0.5`` = unquantized base, batch 8, half
of the layers recomputed.
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from . import fit
from .config import ModelConfig
from .errors import UserError
from .fit import Plan, random_batch, timed_steps
from .modeling import ARCHITECTURES, architecture_config, lora_model, pick_device
from .quantization import FP8, INT8, INT8_WO, NF4, NONE
from .reporting import environment, peak_memory_gib

GPU_TRAIN_ROWS = [
    "recipe",
    f"{INT8}/8/1",
    f"{INT8_WO}/8/1",
    f"{INT8_WO}/32/1",
    f"{INT8_WO}/32/1/compile",
    f"{FP8}/8/1",
    f"{FP8}/32/1",
    f"{FP8}/32/1/compile",
    f"{NF4}/8/1",
    f"{NONE}/8/1",
    f"{NONE}/32/1",
    f"{NONE}/32/1/compile",
    f"{NONE}/32/0",
    f"{NONE}/24/0/compile",
    f"{NONE}/32/0/compile",
    f"{FP8}/32/0/compile",
]
CPU_TRAIN_ROWS = ["recipe", f"{INT8_WO}/8/1", f"{NONE}/8/1"]
LABEL_TOKENS = 40  # a typical Common Voice sentence


@dataclass
class TrainRow:
    """One training configuration of the table."""

    label: str
    mode: str
    batch: int
    checkpointing: float
    compile: bool = False

    @classmethod
    def parse(cls, spec: str, recipe_batch: int = 8) -> TrainRow:
        if spec == "recipe":
            return cls("recipe (LLM.int8, fp16 autocast)", "recipe", recipe_batch, 1.0)
        try:
            mode, batch, share, *rest = spec.split("/")
            if rest not in ([], ["compile"]):
                raise ValueError
            compiled = rest == ["compile"]
            row = cls(
                f"whisper-tune {mode}{', compiled' if compiled else ''}", mode, int(batch), float(share), compiled
            )
            ModelConfig(quantization=row.mode, gradient_checkpointing=row.checkpointing)  # validates both
        except ValueError:
            raise UserError(
                f"benchmark row {spec!r} is not 'recipe' or QUANTIZATION/BATCH/CHECKPOINTING[/compile] "
                f"({ModelConfig.quantization}/8/0.5)"
            ) from None
        return row


def save_random(arch: str, folder: Path) -> None:
    """A random-weight checkpoint of architecture ``arch`` with the offline processor."""
    from transformers import WhisperForConditionalGeneration

    from .processor import build_processor

    if arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    model = WhisperForConditionalGeneration(architecture_config(arch))
    model.half().save_pretrained(folder)  # fp16 on disk: half the bytes
    shape = ARCHITECTURES[arch]
    build_processor(folder, n_mels=shape.mel_bins, num_languages=shape.languages)  # the model's bins and tokens


REFERENCE_RECIPE = "marathi-large-v2-int8"  # the shipped recipe file: LoRA, optimizer and schedule of every row


def reference_config(folder: Path, overrides: list[str] = ()):
    """The reference recipe's TrainConfig on a local checkpoint, with ``key=value`` overrides."""
    from .config import load_train_config

    return load_train_config(REFERENCE_RECIPE, [f"model.base={folder}", *overrides])


def recipe_model(folder: Path, device: torch.device):
    """The reference recipe's model, as its notebook builds it (bitsandbytes 8-bit base,
    fp32 norms and checkpointing from ``prepare_model_for_kbit_training``, the conv1 hook
    that makes inputs require grad), with the recipe file's LoRA: the baseline, deliberately
    not whisper-tune's own model code."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, WhisperForConditionalGeneration

    lora = reference_config(folder).lora
    model = WhisperForConditionalGeneration.from_pretrained(
        folder,
        quantization_config=BitsAndBytesConfig(load_in_8bit=True),
        dtype=torch.float16,
        device_map={"": device},
    )
    model = prepare_model_for_kbit_training(model)
    model.model.encoder.conv1.register_forward_hook(lambda module, inputs, output: output.requires_grad_(True))
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, target_modules=lora.target_modules(), lora_dropout=lora.dropout, bias="none"
    )
    return get_peft_model(model, config)


def _release(device: torch.device) -> None:
    """Give the last row's memory back before the next row loads (rows run in one process),
    and its compiled graphs: the next compiled row would otherwise count its recompiles on
    top of the last row's and could reach dynamo's limit, running some layers eagerly."""
    import torch._dynamo

    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _row_model(row: TrainRow, folder: Path, device: torch.device):
    """(model, optimizer step) of a row: the recipe's notebook model with the Trainer's
    optimizer (AdamW, fp16 autocast), or exactly what ``whisper-tune train`` builds."""
    from .optimization import OptimizerStep, build_optimizer

    overrides = [
        f"model.gradient_checkpointing={row.checkpointing}",
        f"train.batch_size={row.batch}",
        f"train.compile={str(row.compile).lower()}",
    ]
    cfg = reference_config(folder, overrides + ([f"model.quantization={row.mode}"] if row.mode != "recipe" else []))
    if row.mode == "recipe":
        model = recipe_model(folder, device)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.learning_rate)
        amp = torch.float16 if device.type == "cuda" else None
        return model, OptimizerStep(model, optimizer, amp, cfg.train.max_grad_norm)
    model = lora_model(cfg.model, cfg.lora, device, compile=row.compile)
    _, _, step = build_optimizer(model, cfg, total_steps=1, device=device)
    return model, step


def time_training(row: TrainRow, folder: Path, steps: int, device: torch.device, accum: int = 1) -> dict:
    """Seconds per optimizer step and peak memory for one row (one warm-up step, untimed),
    each step ``accum`` micro-batches of ``row.batch``. The step is
    ``training.OptimizerStep``, the one ``whisper-tune train`` runs."""
    model, step = _row_model(row, folder, device)
    batch = random_batch(model.config, row.batch, LABEL_TOKENS, device)  # the same batch for every row
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first, _ = timed_steps(step, batch, accum, 1, device)
    first_peak = None
    if device.type == "cuda":  # LLM.int8's first step allocates far more than later ones
        first_peak = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    times, outcome = timed_steps(step, batch, accum, steps, device)
    step_s = sum(times) / steps
    result = {
        "row": row.label,
        "mode": row.mode,
        "batch": row.batch,
        "grad_accum": accum,
        "checkpointing": row.checkpointing,
        "step_s": step_s,
        "samples_per_s": row.batch * accum / step_s,
        "first_step_s": first[0],
        "loss": float(outcome.loss),
    } | peak_memory_gib(device)
    if first_peak is not None:  # peak_gpu_gib is then the steady peak after the first step
        result["first_step_peak_gpu_gib"] = first_peak
        result["peak_reserved_gpu_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    del model, step
    _release(device)
    return result


def bench_fit(
    arch: str,
    memory: str | None,
    overrides: list[str],
    work: Path,
    config: str | None = None,
    label_tokens: int = LABEL_TOKENS,
) -> Plan:
    """The plan ``batch_size: auto`` and ``gradient_checkpointing: auto`` take for a recipe
    (the reference one unless ``config`` names another) on random weights of ``arch``,
    within ``memory`` ("16GiB": held with torch's per-process memory fraction) or the GPU's
    free memory; ``overrides`` change the recipe (``model.quantization=none
    train.compile=true train.effective_batch=32``). A CPU gets its plan without a model."""
    from .config import load_train_config

    device = pick_device()
    folder = work / f"random-{arch}"
    asked = ["train.batch_size=auto", "model.gradient_checkpointing=auto", *overrides, f"model.base={folder}"]
    cfg = load_train_config(config or REFERENCE_RECIPE, asked + ([f"train.gpu_memory={memory}"] if memory else []))
    if device.type != "cuda":
        return fit.cpu_plan(fit.FitSpace.of(cfg))
    if not (folder / "config.json").exists():
        save_random(arch, folder)
    fit.apply_memory_cap(device, cfg.train.gpu_memory)
    model = lora_model(cfg.model, cfg.lora, device, compile=cfg.train.compile)
    return fit.plan_for(cfg, model, device, label_tokens)


def time_training_isolated(row: TrainRow, folder: Path, steps: int, device: torch.device) -> dict:
    """:func:`time_training` in a fresh process of its own. On a GPU the rows of a table must
    not see each other: compiled kernels, cuBLAS and cuDNN plans and the allocator's pools
    outlive ``torch._dynamo.reset()``, and in one process a compiled bf16 row measured right
    after a compiled fp8 row ran 14 % slower than the same row measured first
    (``benchmarks/results/train-order-h200/``)."""
    with row_process() as pool:
        return pool.submit(time_training, row, folder, steps, device).result()


def row_process() -> ProcessPoolExecutor:
    """One fresh spawned process that hears as this one does (see :func:`_hear_as`)."""
    loggers = logging.root.manager.loggerDict.items()
    levels = {name: log.level for name, log in loggers if isinstance(log, logging.Logger)}
    chatter = (list(warnings.filters), levels | {"": logging.root.level})
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_hear_as, initargs=chatter)


def _hear_as(filters: list, levels: dict[str, int]) -> None:
    """A spawned row process keeps the warning filters and logger levels of the command that
    started it (the CLI silences bitsandbytes' note on every int8 matmul, for one)."""
    warnings.filters[:] = filters
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)


def bench_train(
    arch: str,
    rows: list[str] | None,
    steps: int,
    out: Path,
    work: Path,
    progress=print,
    command: str | None = None,
    isolate: bool | None = None,
) -> dict:
    """Every training row on one random checkpoint, one table; writes JSON and markdown.
    Each row runs in its own process where ``isolate`` (the default on a GPU), else all in
    this one (the CPU's rows share no compiled state worth the seconds a process costs)."""
    device = pick_device()
    if isolate is None:
        isolate = device.type == "cuda"
    timer = time_training_isolated if isolate else time_training
    specs = rows or (GPU_TRAIN_ROWS if device.type == "cuda" else CPU_TRAIN_ROWS)
    parsed = [TrainRow.parse(s) for s in specs]
    folder = work / f"random-{arch}"
    if not (folder / "config.json").exists():
        save_random(arch, folder)
    results = []
    for row in parsed:
        try:
            r = timer(row, folder, steps, device)
        except torch.OutOfMemoryError:
            progress(f"{row.label}, batch {row.batch}: out of memory (row left out)")
            _release(device)
            continue
        results.append(r)
        progress(
            f"{r['row']}, batch {r['batch']}, checkpointing {r['checkpointing']:g}: {r['samples_per_s']:.2f} samples/s"
        )
    recipe = next((r for r in results if r["mode"] == "recipe"), None)
    for r in results:
        if recipe:
            r["speed_vs_recipe"] = r["samples_per_s"] / recipe["samples_per_s"]
            if "peak_gpu_gib" in r:
                r["memory_vs_recipe"] = _overall_peak(r) / _overall_peak(recipe)
    result = {"command": command or " ".join(sys.argv), "arch": arch, "steps": steps, "rows": results}
    result["environment"] = environment(device)
    write_result(result, out, f"train-{arch}", _train_table(result))
    return result


def _ratio(r: dict, key: str, fmt: str = ".2f") -> str:
    """A row's ratio to the recipe row, or a dash where the table has no recipe row."""
    return format(r[key], fmt) if key in r else "–"


def _overall_peak(r: dict) -> float:
    return max(r.get("first_step_peak_gpu_gib", 0.0), r["peak_gpu_gib"])


def _train_table(result: dict) -> list[str]:
    gpu = "gpu" in result["environment"]
    lines = [
        f"{result['steps']} timed steps per row after one warm-up step; 30 s inputs, {LABEL_TOKENS} label tokens, "
        "LoRA r=32 on q/v. Checkpointing is the share of layers recomputed.",
        "",
    ]
    if gpu:
        lines += [
            "| row | batch | checkpointing | samples/s | x recipe | peak GiB, first step | peak GiB, later steps "
            "| memory vs recipe |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in result["rows"]:
            lines.append(
                f"| {r['row']} | {r['batch']} | {r['checkpointing']:g} | {r['samples_per_s']:.2f} "
                f"| {_ratio(r, 'speed_vs_recipe')} | {r['first_step_peak_gpu_gib']:.1f} | {r['peak_gpu_gib']:.1f} "
                f"| {_ratio(r, 'memory_vs_recipe')} |"
            )
    else:
        lines += [
            "| row | batch | checkpointing | s/step | samples/s | peak RSS GiB (process so far) |",
            "|---|---|---|---|---|---|",
        ]
        for r in result["rows"]:
            lines.append(
                f"| {r['row']} | {r['batch']} | {r['checkpointing']:g} | {r['step_s']:.3f} | {r['samples_per_s']:.2f} "
                f"| {r['peak_rss_gib']:.2f} |"
            )
    return lines


def write_result(result: dict, out: Path, stem: str, table: list[str]) -> None:
    """``STEM-gpu|cpu.json`` and ``.md`` in ``out``: the header names the hardware and versions."""
    env = result["environment"]
    where = env.get("gpu") or f"cpu x{env.get('cpu_threads')}"
    suffix = "gpu" if "gpu" in env else "cpu"
    v = env["versions"]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}-{suffix}.json").write_text(json.dumps(result, indent=2))
    header = [
        f"# {stem}, {result['arch']} architecture, on {where}",
        "",
        f"`{result['command']}`",
        "",
        f"torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}, bitsandbytes {v['bitsandbytes']}",
        "",
    ]
    (out / f"{stem}-{suffix}.md").write_text("\n".join(header + table) + "\n")


# ---- transcription ---------------------------------------------------------------------

GPU_TRANSCRIBE_ROWS = ["recipe", "generate/32", "fast/8", "fast/32", "fast/64", "fast/128", "fast-compiled/128"]
ENGINES = ("fast", "fast-compiled", "generate")  # inference.engine.CLIP_DECODERS but auto
CPU_TRANSCRIBE_ROWS = ["recipe", "generate/8", "fast/8"]


def synthetic_clips(n: int, seed: int = 0):
    """``n`` clips of 2-10 s (noise under a tone), as a prepared dataset: generation speed at a
    pinned token count does not depend on what is said, and no corpus or espeak-ng is needed."""
    import datasets
    import numpy as np

    rng = np.random.default_rng(seed)
    audio, durations = [], []
    for _ in range(n):
        seconds = float(rng.uniform(2, 10))
        t = np.arange(int(seconds * 16000)) / 16000
        audio.append((0.1 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.01 * rng.standard_normal(len(t))))
        durations.append(seconds)
    columns = {"id": [f"clip{i:04d}" for i in range(n)], "text": [""] * n, "audio": audio, "duration": durations}
    return datasets.Dataset.from_dict(columns).cast_column("audio", datasets.Sequence(datasets.Value("float32")))


def random_adapter(base: Path, out: Path) -> None:
    """A LoRA adapter shaped as the reference recipe's (r=32 on q/v) with random, non-zero
    weights, recorded as trained on the recipe's base holding (LLM.int8)."""
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    from .run import write_adapter_meta

    cfg = reference_config(base)
    model = WhisperForConditionalGeneration.from_pretrained(base, dtype=torch.float16)
    lora = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, target_modules=cfg.lora.target_modules(), init_lora_weights=False
    )
    get_peft_model(model, lora).save_pretrained(out)
    write_adapter_meta(out, cfg.model, cfg.data.language, cfg.data.task)


def time_transcription(loaded, dataset, engine: str, batch: int, amp, new_tokens: int) -> float:
    """Clips per second over all clips, after a warm-up batch (which captures CUDA graphs);
    ``engine`` is the clip decoder (``inference.engine.CLIP_DECODERS``)."""
    from .evaluation import decode_dataset
    from .inference import TransformersEngine

    decoder = TransformersEngine(loaded.model, loaded.processor, loaded.language, loaded.task, amp=amp, clips=engine)

    def run(limit=None):
        return decode_dataset(decoder, dataset, batch, new_tokens, limit, min_new_tokens=new_tokens)

    run(batch)
    return run().clips_per_s


def bench_transcribe(
    arch: str,
    data: str,
    clips: int,
    new_tokens: int,
    rows: list[str] | None,
    out: Path,
    work: Path,
    progress=print,
    command: str | None = None,
) -> dict:
    """Every transcription row on the same clips, in one process; writes JSON and markdown."""
    from .modeling import load_for_inference

    device = pick_device()
    specs = rows or (GPU_TRANSCRIBE_ROWS if device.type == "cuda" else CPU_TRANSCRIBE_ROWS)
    for spec in specs:
        if spec != "recipe" and (spec.count("/") != 1 or spec.split("/")[0] not in ENGINES):
            raise UserError(
                f"transcription row {spec!r} is not 'recipe' or ENGINE/BATCH with ENGINE one of "
                f"{', '.join(ENGINES)} (fast/32, generate/8)"
            )
    base, adapter = work / f"random-{arch}", work / f"adapter-{arch}"
    if not (base / "config.json").exists():
        save_random(arch, base)
    if not (adapter / "adapter_config.json").exists():
        random_adapter(base, adapter)
    if data == "synthetic":
        dataset = synthetic_clips(clips)
    else:
        from .config import DataConfig
        from .prepare import prepare_split

        prepared = prepare_split(DataConfig(source=data), "train", work / "prepared", str(base))
        dataset = prepared.select(range(min(clips, len(prepared))))
    results, loaded = [], None
    for spec in specs:
        exact = spec == "recipe"
        engine, batch = ("generate", 8) if exact else (spec.split("/")[0], int(spec.split("/")[1]))
        if loaded is None or loaded.holding.quantized != exact:
            loaded = None
            _release(device)
            loaded = load_for_inference(str(base), str(adapter), device, exact=exact)
        amp = torch.float16 if exact and device.type == "cuda" else None
        dtype = str(next(loaded.model.parameters()).dtype).replace("torch.", "")
        label = f"merged {dtype}, {engine}"
        if exact:
            label = "recipe: LLM.int8 base + adapter, generate" + (", fp16 autocast" if amp else "")
        rate = time_transcription(loaded, dataset, engine, batch, amp, new_tokens)
        held = {"mode": loaded.describe(), "quantization": loaded.holding.name, "merged": loaded.merged}
        results.append({"row": label, "engine": engine, "batch": batch, "clips_per_s": rate} | held)
        progress(f"{label}, batch {batch}: {rate:.2f} clips/s")
    recipe = next((r for r in results if r["row"].startswith("recipe")), None)
    for r in results:
        if recipe:
            r["speed_vs_recipe"] = r["clips_per_s"] / recipe["clips_per_s"]
    result = {
        "command": command or " ".join(sys.argv),
        "arch": arch,
        "clips": len(dataset),
        "data": data,
        "new_tokens": new_tokens,
        "rows": results,
        "environment": environment(device),
    }
    table = [
        f"{len(dataset)} clips ({data}), exactly {new_tokens} new tokens each (min = max), language forced; "
        "each row first decodes one batch to warm up (CUDA graph capture for `fast`).",
        "",
        "| row | batch | clips/s | x recipe |",
        "|---|---|---|---|",
    ]
    table += [
        f"| {r['row']} | {r['batch']} | {r['clips_per_s']:.2f} | {_ratio(r, 'speed_vs_recipe', '.1f')} |"
        for r in results
    ]
    write_result(result, out, f"transcribe-{arch}", table)
    return result
