"""CPU transcription: whisper-tune's engines against faster-whisper on whisper-tune's own export.

    python benchmarks/cpu_transcribe.py --model demo-output/whisper-base --adapter demo-output/run/adapter \\
        --clips demo-output/corpus/mr/clips --limit 40 --rounds 3

Same model (the adapter merged, then exported with ``export-ct2``), same clips in memory,
one process, language forced, greedy decoding with time stamps on every side. Engines:

* ``batched``: what ``whisper-tune transcribe`` runs on a merged model now
  (``longform.transcribe_batched``: the fast decoder with time stamps, clips decoded
  ``--batch-size`` at a time, static caches, eager on the CPU);
* ``sequential``: the path it ran before (``transcribe_audio``: transformers' ``generate``
  per clip);
* faster-whisper on the float32 and int8 exports (one clip at a time, as its
  ``WhisperModel.transcribe``).

The CPU is shared, so the engines are interleaved: each round runs every engine once on all
clips (after one warm-up clip each), and the table reports each engine's median round and
the median of its per-round ratio to faster-whisper float32. Writes JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from whisper_tune.audio import load_audio
from whisper_tune.export import export_ct2, merge
from whisper_tune.inference.generate import transcribe_audio
from whisper_tune.inference.longform import transcribe_batched
from whisper_tune.inference.options import DecodingOptions
from whisper_tune.reporting import environment

GREEDY = DecodingOptions.greedy()  # what this benchmark has always timed
BASELINE = "faster-whisper float32"


def engines(merged: Path, tmp: Path, language: str, threads: int, batch_size: int) -> dict:
    """name -> function(list of audios) -> list of texts."""
    from faster_whisper import WhisperModel
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(merged, dtype=torch.float32).eval()
    processor = WhisperProcessor.from_pretrained(merged)

    def batched(audios):
        out = transcribe_batched(model, processor, audios, language, batch_size=batch_size, decoding=GREEDY)
        return [" ".join(s.text for s in segments) for segments, _ in out]

    def sequential(audios):
        return [
            " ".join(s.text for s in transcribe_audio(model, processor, a, language, decoding=GREEDY)[0])
            for a in audios
        ]

    found = {
        f"whisper-tune batched (fp32, batch {batch_size})": batched,
        "whisper-tune sequential (generate, fp32)": sequential,
    }
    for compute in ("float32", "int8"):
        fw = WhisperModel(
            str(export_ct2(merged, tmp / f"ct2-{compute}", quantization=compute)),
            device="cpu",
            compute_type=compute,
            cpu_threads=threads,
        )

        def run(audios, fw=fw):
            return [
                " ".join(s.text for s in fw.transcribe(a, language=language, beam_size=1, temperature=0.0)[0])
                for a in audios
            ]

        found[f"faster-whisper {compute}"] = run
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--clips", required=True, help="folder of audio clips")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--language", default="mr")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-sequential", action="store_true", help="leave out the slow old path")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clips = sorted(p for p in Path(args.clips).iterdir() if p.suffix in (".mp3", ".wav", ".flac"))[: args.limit]
    audios = [load_audio(p) for p in clips]
    seconds_audio = sum(len(a) for a in audios) / 16000
    times: dict[str, list[float]] = {}
    texts: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        merged = (
            merge(args.model, args.adapter, Path(tmp) / "merged", dtype="float32") if args.adapter else Path(args.model)
        )
        runs = engines(merged, Path(tmp), args.language, args.threads, args.batch_size)
        if args.skip_sequential:
            runs = {k: v for k, v in runs.items() if "sequential" not in k}
        for run in runs.values():
            run(audios[:1])  # warm-up
        for r in range(args.rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                texts[name] = run(audios)
                times.setdefault(name, []).append(time.perf_counter() - start)
                print(f"round {r + 1} {name}: {times[name][-1]:.1f} s", flush=True)
    base = times[BASELINE]
    ours = next(k for k in runs if "batched" in k)
    rows = []
    for name, t in times.items():
        row = {"engine": name, "seconds_per_round": t, "seconds": statistics.median(t)}
        row["clips_per_s"] = len(audios) / row["seconds"]
        row["realtime_factor"] = seconds_audio / row["seconds"]
        row["speed_vs_faster_whisper_float32"] = statistics.median(b / x for b, x in zip(base, t))
        row["same_text_as_batched"] = sum(a.split() == b.split() for a, b in zip(texts[ours], texts[name]))
        rows.append(row)
        print(
            f"{name}: {row['clips_per_s']:.2f} clips/s ({row['realtime_factor']:.1f}x real time), "
            f"{row['speed_vs_faster_whisper_float32']:.2f}x faster-whisper float32",
            flush=True,
        )
    env = environment(torch.device("cpu"))
    result = {
        "command": "python " + " ".join(sys.argv),
        "clips": len(audios),
        "audio_seconds": seconds_audio,
        "threads": args.threads,
        "rounds": args.rounds,
        "rows": rows,
        "environment": env,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu_transcribe.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# CPU transcription, {len(audios)} clips ({seconds_audio:.0f} s of audio), {args.threads} threads, "
        f"{args.rounds} interleaved rounds",
        "",
        f"`{result['command']}`",
        "",
        f"torch {env['versions']['torch']}, transformers {env['versions']['transformers']}; greedy with time "
        "stamps everywhere; median round; speed ratio = median of the per-round ratios (the CPU is shared)",
        "",
        "| engine | clips/s | x real time | x faster-whisper float32 | same text as batched |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['engine']} | {r['clips_per_s']:.2f} | {r['realtime_factor']:.1f} | "
        f"{r['speed_vs_faster_whisper_float32']:.2f} | {r['same_text_as_batched']}/{len(audios)} |"
        for r in rows
    ]
    (out / "cpu_transcribe.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
