"""Several adapters on one base: what the busiest adapter gains decoded from a merged copy.

    python benchmarks/merged_adapter.py --model /work/artifacts/whisper-base \\
        --clips /work/artifacts/demo-corpus-mr/test.tsv --limit 8 --rounds 3 \\
        --out benchmarks/results/merged-adapter-cpu

``whisper-tune api --adapter a=... --adapter b=...`` holds both adapters unmerged on one base
and switches between them per request; the adapter most requests ask for is decoded from a
merged copy (``inference/merged.py``). This times the busiest adapter's requests both ways on
the same engine settings (the API's default decoding), and checks the text is the same.

Adapters: ``--adapter NAME=PATH`` (repeat; the first is the busy one), and as many random
LoRA adapters as it takes to have two (``--rank``, all linear layers: the GPU demo's
settings), saved with the first adapter's base record so that they share its base.

The CPU is shared, so the two ways are interleaved: each round decodes every clip once
unmerged and once merged, and the result reports each way's median round and the median of
the per-round ratio. Writes ``merged-adapter.json`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from whisper_tune.audio import load_audio
from whisper_tune.inference import DecodingOptions, open_engine
from whisper_tune.inference.options import FILE_DECODING
from whisper_tune.reporting import environment


def random_adapter(model: str, out: Path, rank: int, seed: int, meta_from: Path | None) -> Path:
    """A LoRA adapter on every linear layer of ``model`` with random weights (small, so the
    text stays near the base's), laid out as training leaves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from whisper_tune.config import ModelConfig
    from whisper_tune.run import ADAPTER_META, write_adapter_meta

    torch.manual_seed(seed)
    base = WhisperForConditionalGeneration.from_pretrained(model)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False)
    peft = get_peft_model(base, config)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.002)
    peft.save_pretrained(out)
    WhisperProcessor.from_pretrained(model).save_pretrained(out)
    if meta_from is not None:
        shutil.copy(meta_from / ADAPTER_META, out / ADAPTER_META)
    else:
        write_adapter_meta(out, ModelConfig(base=model), "mr", "transcribe")
    return out


def clip_paths(source: Path, limit: int) -> list[Path]:
    """The first ``limit`` clips of a folder, or of a Common Voice .tsv (its ``path`` column)."""
    if source.is_dir():
        return sorted(p for p in source.iterdir() if p.suffix in (".mp3", ".wav", ".flac"))[:limit]
    rows = source.read_text(encoding="utf-8").splitlines()
    column = rows[0].split("\t").index("path")
    return [source.parent / "clips" / row.split("\t")[column] for row in rows[1 : limit + 1]]


def round_seconds(engine, audios, name) -> tuple[float, list[str]]:
    start = time.perf_counter()
    texts = [engine.transcript(a, adapter=name).text for a in audios]
    return time.perf_counter() - start, texts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the base (a folder)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--rank", type=int, default=32, help="rank of the random adapters (default: 32)")
    p.add_argument("--clips", required=True, type=Path, help="a folder of clips or a Common Voice .tsv")
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (default: the API's, with fallback)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="merged-adapter-") as tmp:
        adapters = dict(spec.split("=", 1) for spec in args.adapter)
        first = Path(next(iter(adapters.values()))) if adapters else None
        for i in range(len(adapters), 2):
            adapters[f"random{i}"] = str(random_adapter(args.model, Path(tmp) / f"r{i}", args.rank, i, first))
        busy = next(iter(adapters))
        decoding = DecodingOptions.greedy() if args.greedy else DecodingOptions(**FILE_DECODING)  # the API's
        engines = {
            way: open_engine(args.model, adapters=adapters, device=cpu, decoding=decoding, merge_busiest=merge)
            for way, merge in (("unmerged", False), ("merged", True))
        }
        engines["merged"].merged.least = 1  # the copy from the first request on
        audios = [load_audio(c) for c in clip_paths(args.clips, args.limit)]
        for engine in engines.values():
            engine.transcript(audios[0], adapter=busy)  # warm-up (and the merged copy)
        assert engines["merged"].merged.name == busy, engines["merged"].merged.declined
        seconds = {way: [] for way in engines}
        texts = {}
        for _ in range(args.rounds):
            for way, engine in engines.items():
                spent, texts[way] = round_seconds(engine, audios, busy)
                seconds[way].append(spent)
                print(f"{way}: {spent:.2f} s", flush=True)
    ratio = statistics.median(u / m for u, m in zip(seconds["unmerged"], seconds["merged"]))
    result = {
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "question": "the busiest of several adapters on one base: decoded merged vs unmerged",
        "model": args.model,
        "adapters": {
            name: path if not path.startswith(tempfile.gettempdir()) else f"random r={args.rank}"
            for name, path in adapters.items()
        },
        "decoding": "greedy" if args.greedy else "the API's default (fallback temperatures)",
        "clips": len(audios),
        "audio_seconds": round(sum(len(a) for a in audios) / 16000, 1),
        "rounds": args.rounds,
        "seconds": {way: [round(s, 3) for s in v] for way, v in seconds.items()},
        "median_seconds": {way: round(statistics.median(v), 3) for way, v in seconds.items()},
        "speedup_merged": round(ratio, 3),
        "same_text": texts["merged"] == texts["unmerged"],
        "load_average": os.getloadavg(),
        "environment": environment(cpu),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "merged-adapter.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (args.out / "merged-adapter.md").write_text(markdown(result))
    print(f"busiest adapter merged: {ratio:.2f}x the unmerged speed (same text: {result['same_text']})")
    return 0 if result["same_text"] else 1


def markdown(result: dict) -> str:
    med = result["median_seconds"]
    return "\n".join(
        [
            f"`{result['command']}`",
            "",
            f"{result['clips']} clips ({result['audio_seconds']} s of audio), {result['decoding']} decoding, "
            f"{result['rounds']} interleaved rounds; "
            f"load average {', '.join(f'{x:.1f}' for x in result['load_average'])} (a shared machine).",
            "",
            "| busiest adapter | median round (s) |",
            "|---|---|",
            f"| unmerged (LoRA branches, PEFT set_adapter) | {med['unmerged']:.2f} |",
            f"| merged copy | {med['merged']:.2f} |",
            "",
            f"Merged: **{result['speedup_merged']:.2f}x** (median of per-round ratios); "
            f"same text: {result['same_text']}.",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
