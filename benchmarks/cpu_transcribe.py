"""CPU transcription: whisper-tune against faster-whisper on whisper-tune's own export.

    python benchmarks/cpu_transcribe.py --model demo-output/whisper-base --adapter demo-output/run/adapter \\
        --clips demo-output/corpus/mr/clips --limit 25

Same model (the adapter merged, then exported with ``export-ct2``), same clips, one
process, language forced, greedy decoding with timestamps on both sides; each side first
transcribes one clip to warm up. whisper-tune runs the merged fp32 model through
transformers, and the int8 export through its faster-whisper engine (``transcribe --model
EXPORT``, which also decodes the audio files); faster-whisper runs the CTranslate2 export at
float32 and at int8 on audio already in memory.
Writes JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from whisper_tune.audio import load_audio
from whisper_tune.export import export_ct2, merge
from whisper_tune.reporting import environment
from whisper_tune.robust_decoding import DecodingOptions
from whisper_tune.transcription import transcribe_audio, transcribe_files_ct2

GREEDY = DecodingOptions.greedy()  # what this benchmark has always timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--clips", required=True, help="folder of audio clips")
    parser.add_argument("--limit", type=int, default=25)
    parser.add_argument("--language", default="mr")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    from faster_whisper import WhisperModel
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    torch.set_num_threads(args.threads)
    clips = sorted(p for p in Path(args.clips).iterdir() if p.suffix in (".mp3", ".wav", ".flac"))[: args.limit]
    audios = [load_audio(p) for p in clips]
    seconds_audio = sum(len(a) for a in audios) / 16000
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        merged = merge(args.model, args.adapter, Path(tmp) / "merged", dtype="float32") if args.adapter else args.model
        model = WhisperForConditionalGeneration.from_pretrained(merged, dtype=torch.float32).eval()
        processor = WhisperProcessor.from_pretrained(merged)
        transcribe_audio(model, processor, audios[0], args.language, decoding=GREEDY)  # warm-up
        start = time.perf_counter()
        ours = [
            " ".join(s.text for s in transcribe_audio(model, processor, a, args.language, decoding=GREEDY)[0])
            for a in audios
        ]
        rows.append({"engine": "whisper-tune transcribe (transformers, fp32)", "seconds": time.perf_counter() - start})
        ct2 = export_ct2(merged, Path(tmp) / "ct2-int8", quantization="int8")
        list(
            transcribe_files_ct2(ct2, [clips[0]], args.language, compute_type="int8", progress=False, decoding=GREEDY)
        )  # warm-up
        start = time.perf_counter()
        mine = [
            t.text
            for t in transcribe_files_ct2(
                ct2, clips, args.language, compute_type="int8", progress=False, decoding=GREEDY
            )
        ]
        row = {"engine": "whisper-tune transcribe --model <export-ct2 int8> (faster-whisper engine)"}
        row |= {"seconds": time.perf_counter() - start}
        row["same_text_as_whisper_tune"] = sum(a.split() == b.split() for a, b in zip(ours, mine))
        rows.append(row)
        for compute in ("float32", "int8"):
            ct2 = export_ct2(merged, Path(tmp) / f"ct2-{compute}", quantization=compute)
            fw = WhisperModel(str(ct2), device="cpu", compute_type=compute, cpu_threads=args.threads)
            list(fw.transcribe(audios[0], language=args.language, beam_size=1, temperature=0.0)[0])  # warm-up
            start = time.perf_counter()
            texts = [
                " ".join(s.text for s in fw.transcribe(a, language=args.language, beam_size=1, temperature=0.0)[0])
                for a in audios
            ]
            row = {"engine": f"faster-whisper on export-ct2 ({compute})", "seconds": time.perf_counter() - start}
            row["same_text_as_whisper_tune"] = sum(a.split() == b.split() for a, b in zip(ours, texts))
            rows.append(row)
    for r in rows:
        r["clips_per_s"] = len(audios) / r["seconds"]
        r["realtime_factor"] = seconds_audio / r["seconds"]
        print(f"{r['engine']}: {r['clips_per_s']:.2f} clips/s ({r['realtime_factor']:.1f}x real time)", flush=True)
    env = environment(torch.device("cpu"))
    result = {
        "command": "python " + " ".join(sys.argv),
        "clips": len(audios),
        "audio_seconds": seconds_audio,
        "threads": args.threads,
        "rows": rows,
        "environment": env,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu_transcribe.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# CPU transcription, {len(audios)} clips ({seconds_audio:.0f} s of audio), {args.threads} threads",
        "",
        f"`{result['command']}`",
        "",
        f"torch {env['versions']['torch']}, transformers "
        f"{env['versions']['transformers']}; faster-whisper beam 1, whisper-tune greedy, both with timestamps",
        "",
        "| engine | clips/s | x real time | same text as whisper-tune |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['engine']} | {r['clips_per_s']:.2f} | {r['realtime_factor']:.1f} | "
        f"{r.get('same_text_as_whisper_tune', '-')} |"
        for r in rows
    ]
    (out / "cpu_transcribe.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
