"""What Silero VAD changes: long-form WER and time, and text written over non-speech, with
and without ``vad_filter`` (``inference/vad.py``), for a base and a fine-tune.

    python benchmarks/vad_effect.py --corpus /work/artifacts/demo-corpus-mr \
        --adapter /work/artifacts/gpu-demo-adapter --out benchmarks/results/vad-words-cpu

Long files: the corpus's held-out ``unseen`` clips joined with ``report_card.join_clips``
(low noise between clips), with pauses of ``--pause`` seconds (default 1-8 s: a talk with
long pauses, where VAD has something to remove). Non-speech: ``nonspeech.nonspeech_clips``
(silence, room tone, noises, tones, music-like), the report card's generator. Decoding is
``transcribe``'s default (``--decoding file``: greedy with openai's fallback and thresholds,
no previous-text conditioning) or plain greedy (``--decoding greedy``: no fallback and no
no-speech check, so VAD's effect alone shows; far faster where the base loops, as Whisper
base does on Marathi); VAD's parameters are faster-whisper's defaults. Writes ``vad_effect.json``
and prints one line per model and setting.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path


def held_out(corpus: Path, split: str, limit: int):
    from whisper_tune.audio import load_audio

    with open(corpus / f"{split}.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:limit]
    return [load_audio(corpus / "clips" / r["path"]) for r in rows], [r["sentence"] for r in rows]


def measure(engine, files, nonspeech, language: str, vad: bool) -> dict:
    from whisper_tune.evaluation import GenerationResult, summarize
    from whisper_tune.report_card import false_text_rate

    start = time.perf_counter()
    decoded = engine.transcribe([f.audio for f in files], language=language, vad_filter=vad)
    seconds = time.perf_counter() - start
    texts = [" ".join(s.text for s in segments).strip() for segments, _ in decoded]
    result = GenerationResult([str(i) for i in range(len(files))], [f.reference for f in files], texts, seconds)
    summary = summarize(result)[0]
    start = time.perf_counter()
    silent = engine.transcribe(nonspeech, language=language, vad_filter=vad)
    nonspeech_seconds = time.perf_counter() - start
    said = [" ".join(s.text for s in segments).strip() for segments, _ in silent]
    return {
        "vad_filter": vad,
        "longform_wer": round(summary.normalized_wer, 2),
        "longform_seconds": round(seconds, 2),
        "false_text": round(100 * false_text_rate(said), 1),
        "nonspeech_seconds": round(nonspeech_seconds, 2),
        "nonspeech_texts": said,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="a demo corpus folder (its held-out split)")
    parser.add_argument("--split", default="unseen")
    parser.add_argument("--clips", type=int, default=82, help="held-out clips joined into long files")
    parser.add_argument("--seconds", type=float, default=120.0, help="length of each long file")
    parser.add_argument("--pause", type=float, nargs=2, default=(1.0, 8.0), help="pause between clips (s)")
    parser.add_argument("--nonspeech", type=int, default=22, help="non-speech clips (two of each kind)")
    parser.add_argument("--base", default="/work/artifacts/whisper-base")
    parser.add_argument("--adapter", default=None, help="a fine-tune to measure beside the base")
    parser.add_argument("--language", default="mr")
    parser.add_argument("--decoding", choices=("file", "greedy"), default="file")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    import transformers

    from whisper_tune.inference import DecodingOptions, open_engine
    from whisper_tune.inference.options import FILE_DECODING
    from whisper_tune.nonspeech import nonspeech_clips
    from whisper_tune.report_card import join_clips

    clips, references = held_out(Path(args.corpus), args.split, args.clips)
    files = join_clips(clips, references, args.seconds, pause=tuple(args.pause))
    nonspeech = [c.audio for c in nonspeech_clips(args.nonspeech)]
    decoding = DecodingOptions(**FILE_DECODING) if args.decoding == "file" else DecodingOptions.greedy()
    rows = []
    for name, adapter in (("base", None), ("fine-tune", args.adapter)):
        if name == "fine-tune" and not adapter:
            continue
        engine = open_engine(args.base, adapter, language=args.language, decoding=decoding, device=torch.device("cpu"))
        for vad in (False, True):
            row = {"model": name} | measure(engine, files, nonspeech, args.language, vad)
            rows.append(row)
            print(
                f"{name:9s} vad={'on ' if vad else 'off'} long-form WER {row['longform_wer']:6.2f} % in "
                f"{row['longform_seconds']:6.1f} s; non-speech given text {row['false_text']:5.1f} % "
                f"({row['nonspeech_seconds']:.1f} s)",
                flush=True,
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "python benchmarks/vad_effect.py " + " ".join(f"{k}={v}" for k, v in vars(args).items()),
        "longform": {"files": len(files), "seconds": round(sum(f.seconds for f in files), 1), "pause": args.pause},
        "nonspeech": {"clips": len(nonspeech), "seconds": round(sum(len(a) for a in nonspeech) / 16000, 1)},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "rows": rows,
    }
    (out / "vad_effect.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
